"""The pipeline file that `flowctl init` writes."""

STARTER_PIPELINE = """\
# A starter pipeline: numbers in, squares of the even ones out.
# Run it with: flowctl run pipeline.yaml
apiVersion: flowctl/v1
kind: Pipeline
metadata:
  name: starter
spec:
  sources:
    - id: numbers
      stage: generate
      config: {count: 1000}
  processors:
    - id: evens
      stage: filter
      config: {where: "r['seq'] % 2 == 0"}
      inputs: [numbers]
    - id: squares
      stage: map
      config: {expr: "{'n': r['seq'], 'square': r['seq'] ** 2}"}
      inputs: [evens]
  sinks:
    - id: out
      stage: write-jsonl
      config: {path: out/squares.jsonl}
      inputs: [squares]
    - id: tally
      command: [wc, -l]          # any executable works as a stage; this
      codec: lines               # one prints the count on flowctl's stdout
      inputs: [squares]
"""
