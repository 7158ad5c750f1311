"""Unit tests of the text codecs that external executables speak."""

from __future__ import annotations

import pytest

from flowctl import codecs


def decode_all(name: str, chunks: list[bytes]) -> list:
    """Decode `chunks` with a fresh codec, as one stream of stdout reads."""
    codec = codecs.make_codec(name)
    records = []
    for chunk in chunks:
        records.extend(codec.decode(chunk))
    records.extend(codec.decode_end())
    return records


def assert_any_split_decodes(name: str, data: bytes, expected: list) -> None:
    """Decode `data` cut in two at every byte offset, empty halves included."""
    for cut in range(len(data) + 1):
        records = decode_all(name, [data[:cut], data[cut:]])
        assert records == expected, f"cut at byte {cut}"


# lines

def test_lines_encode_string_record():
    codec = codecs.make_codec("lines")
    assert codec.encode(["hello", "world"]) == b"hello\nworld\n"


def test_lines_encode_line_key():
    codec = codecs.make_codec("lines")
    records = [{"line": "first"}, {"line": 42, "other": "ignored"}]
    assert codec.encode(records) == b"first\n42\n"


def test_lines_encode_other_as_json():
    codec = codecs.make_codec("lines")
    records = [{"seq": 1, "name": "café"}, [1, 2], 7, None]
    expected = '{"seq":1,"name":"café"}\n[1,2]\n7\nnull\n'.encode("utf-8")
    assert codec.encode(records) == expected


def test_lines_encode_empty_batch():
    codec = codecs.make_codec("lines")
    assert codec.encode([]) == b""


def test_lines_decode_complete_lines():
    codec = codecs.make_codec("lines")
    assert codec.decode(b"one\n\nthree\n") == [
        {"line": "one"}, {"line": ""}, {"line": "three"}]
    assert codec.decode_end() == []


def test_lines_decode_keeps_partial_line():
    codec = codecs.make_codec("lines")
    assert codec.decode(b"one\ntw") == [{"line": "one"}]
    assert codec.decode(b"o") == []
    assert codec.decode(b"\nthr") == [{"line": "two"}]
    assert codec.decode_end() == [{"line": "thr"}]


def test_lines_decode_end_resets():
    codec = codecs.make_codec("lines")
    codec.decode(b"tail")
    assert codec.decode_end() == [{"line": "tail"}]
    assert codec.decode_end() == []


def test_lines_decode_any_split():
    data = "a\ncafé\nz".encode("utf-8")
    expected = [{"line": "a"}, {"line": "café"}, {"line": "z"}]
    assert_any_split_decodes("lines", data, expected)


def test_lines_decode_invalid_utf8():
    codec = codecs.make_codec("lines")
    assert codec.decode(b"bad \xff\xfe byte\n") == [
        {"line": "bad \ufffd\ufffd byte"}]


def test_lines_decode_invalid_utf8_at_end():
    codec = codecs.make_codec("lines")
    assert codec.decode(b"ok\ncut \xc3") == [{"line": "ok"}]
    assert codec.decode_end() == [{"line": "cut \ufffd"}]


# jsonl

def test_jsonl_encode_compact_lines():
    codec = codecs.make_codec("jsonl")
    records = [{"seq": 1, "name": "café"}, "text", [1, None], True]
    expected = '{"seq":1,"name":"café"}\n"text"\n[1,null]\ntrue\n'
    assert codec.encode(records) == expected.encode("utf-8")


def test_jsonl_encode_line_key_stays_json():
    codec = codecs.make_codec("jsonl")
    assert codec.encode([{"line": "x"}]) == b'{"line":"x"}\n'


def test_jsonl_encode_empty_batch():
    codec = codecs.make_codec("jsonl")
    assert codec.encode([]) == b""


def test_jsonl_decode_records():
    codec = codecs.make_codec("jsonl")
    data = b'{"a": 1}\n[1, 2]\n"s"\n3.5\nnull\n'
    assert codec.decode(data) == [{"a": 1}, [1, 2], "s", 3.5, None]
    assert codec.decode_end() == []


def test_jsonl_decode_skips_blank_lines():
    codec = codecs.make_codec("jsonl")
    assert codec.decode(b'\n  \n{"a": 1}\n\t\n') == [{"a": 1}]


def test_jsonl_decode_last_line_without_newline():
    codec = codecs.make_codec("jsonl")
    assert codec.decode(b'{"a": 1}\n{"b": 2}') == [{"a": 1}]
    assert codec.decode_end() == [{"b": 2}]


def test_jsonl_decode_any_split():
    data = '{"k":"é"}\n{"k":[1,2]}\n'.encode("utf-8")
    expected = [{"k": "é"}, {"k": [1, 2]}]
    assert_any_split_decodes("jsonl", data, expected)


def test_jsonl_decode_invalid_json():
    codec = codecs.make_codec("jsonl")
    with pytest.raises(codecs.CodecError) as raised:
        codec.decode(b'{"a": 1}\nnot json\n')
    assert str(raised.value) == ("output line is not JSON (Expecting value): "
                                 "'not json'")


def test_jsonl_decode_invalid_json_at_end():
    codec = codecs.make_codec("jsonl")
    assert codec.decode(b'{"a": 1}\n{"b": ') == [{"a": 1}]
    with pytest.raises(codecs.CodecError) as raised:
        codec.decode_end()
    assert str(raised.value) == ("output line is not JSON (Expecting value): "
                                 "'{\"b\": '")


def test_jsonl_decode_error_preview_truncated():
    codec = codecs.make_codec("jsonl")
    line = "x" * 100
    with pytest.raises(codecs.CodecError) as raised:
        codec.decode(line.encode() + b"\n")
    preview = "x" * 77 + "..."
    assert str(raised.value) == (f"output line is not JSON (Expecting value): "
                                 f"'{preview}'")


def test_jsonl_decode_invalid_utf8():
    codec = codecs.make_codec("jsonl")
    assert codec.decode(b'{"name": "a\xffb"}\n') == [{"name": "a\ufffdb"}]


# csv

def test_csv_encode_header_once():
    codec = codecs.make_codec("csv")
    first = codec.encode([{"id": 1, "name": "ann"}, {"id": 2, "name": "bo"}])
    second = codec.encode([{"id": 3, "name": "cy"}])
    assert first == b"id,name\n1,ann\n2,bo\n"
    assert second == b"3,cy\n"


def test_csv_encode_quotes_fields():
    codec = codecs.make_codec("csv")
    records = [{"id": 1, "text": "a, b"},
               {"id": 2, "text": 'say "hi"'},
               {"id": 3, "text": "two\nlines"}]
    expected = b'id,text\n1,"a, b"\n2,"say ""hi"""\n3,"two\nlines"\n'
    assert codec.encode(records) == expected


def test_csv_encode_columns_from_first_record():
    codec = codecs.make_codec("csv")
    records = [{"a": 1, "b": 2}, {"b": 3, "extra": 4}, {"a": None, "b": 5}]
    assert codec.encode(records) == b"a,b\n1,2\n,3\n,5\n"


def test_csv_encode_rejects_non_mapping_first():
    codec = codecs.make_codec("csv")
    with pytest.raises(codecs.CodecError) as raised:
        codec.encode([5])
    assert str(raised.value) == "the csv codec takes mapping records, got int"


def test_csv_encode_rejects_non_mapping_later():
    codec = codecs.make_codec("csv")
    codec.encode([{"a": 1}])
    with pytest.raises(codecs.CodecError) as raised:
        codec.encode([{"a": 2}, "text"])
    assert str(raised.value) == "the csv codec takes mapping records, got str"


def test_csv_decode_header_and_rows():
    codec = codecs.make_codec("csv")
    assert codec.decode(b"id,name\n1,ann\n2,\n") == [
        {"id": "1", "name": "ann"}, {"id": "2", "name": ""}]
    assert codec.decode_end() == []


def test_csv_decode_header_only():
    assert decode_all("csv", [b"id,name\n"]) == []


def test_csv_decode_skips_blank_lines():
    assert decode_all("csv", [b"id\n\n1\n\n2\n"]) == [{"id": "1"}, {"id": "2"}]


def test_csv_decode_crlf_rows():
    assert decode_all("csv", [b"id,name\r\n1,ann\r\n"]) == [
        {"id": "1", "name": "ann"}]


def test_csv_decode_last_row_without_newline():
    codec = codecs.make_codec("csv")
    assert codec.decode(b"id,name\n1,ann\n2,bo") == [{"id": "1", "name": "ann"}]
    assert codec.decode_end() == [{"id": "2", "name": "bo"}]


def test_csv_decode_escaped_quotes():
    data = b'id,text\n1,"say ""hi"", then go"\n'
    assert decode_all("csv", [data]) == [
        {"id": "1", "text": 'say "hi", then go'}]


CSV_TRICKY = ('id,text,city\n'
              '1,"first line\nsecond, with comma",Zürich\n'
              '2,"a ""quoted"" word\n\nafter a blank line",Oslo\n'
              '3,plain,"Rio, RJ"\n').encode("utf-8")

CSV_TRICKY_RECORDS = [
    {"id": "1", "text": "first line\nsecond, with comma", "city": "Zürich"},
    {"id": "2", "text": 'a "quoted" word\n\nafter a blank line', "city": "Oslo"},
    {"id": "3", "text": "plain", "city": "Rio, RJ"},
]


def test_csv_decode_any_split():
    assert_any_split_decodes("csv", CSV_TRICKY, CSV_TRICKY_RECORDS)


def test_csv_decode_one_byte_chunks():
    chunks = [CSV_TRICKY[i:i + 1] for i in range(len(CSV_TRICKY))]
    assert decode_all("csv", chunks) == CSV_TRICKY_RECORDS


def test_csv_decode_holds_open_quoted_row():
    codec = codecs.make_codec("csv")
    assert codec.decode(b'id,text\n1,"open\n') == []
    assert codec.decode(b'still open\n') == []
    assert codec.decode(b'closed"\n') == [
        {"id": "1", "text": "open\nstill open\nclosed"}]


def test_csv_decode_unterminated_quote():
    codec = codecs.make_codec("csv")
    assert codec.decode(b'id,text\n1,ok\n2,"never closed\n') == [
        {"id": "1", "text": "ok"}]
    with pytest.raises(codecs.CodecError):
        codec.decode_end()


def test_csv_decode_invalid_utf8():
    assert decode_all("csv", [b"name\nA\xffB\n"]) == [{"name": "A\ufffdB"}]


def test_csv_round_trip():
    records = [{"id": "1", "text": 'x, "y"\nz'}, {"id": "2", "text": ""}]
    writer = codecs.make_codec("csv")
    data = writer.encode(records)
    assert decode_all("csv", [data]) == records


def test_make_codec_names():
    assert type(codecs.make_codec("lines")) is codecs.LinesCodec
    assert type(codecs.make_codec("jsonl")) is codecs.JsonlCodec
    assert type(codecs.make_codec("csv")) is codecs.CsvCodec


def test_make_codec_fresh_state():
    first = codecs.make_codec("lines")
    first.decode(b"partial")
    second = codecs.make_codec("lines")
    assert second.decode_end() == []
