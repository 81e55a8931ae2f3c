"""Text loading, vocabularies and truncated-BPTT batching."""

import pytest
import torch

from rnnlab.data import (
    StreamBatches,
    Vocabulary,
    bundled_corpus_path,
    eval_chunks,
    load_text,
    min_tokens,
    split_train_val,
)
from rnnlab.data.vocab import UNK
from rnnlab.errors import UserError


def test_bundled_corpus_is_tiny_shakespeare():
    text = load_text()
    assert bundled_corpus_path().is_file()
    assert len(text) == 1_115_394
    assert len(set(text)) == 65
    assert text.startswith("First Citizen:")


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "not found"),
        (b"", "empty"),
        (b"abc\xffdef", "not valid UTF-8"),
    ],
)
def test_load_text_errors(tmp_path, content, message):
    path = tmp_path / "t.txt"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(UserError, match=message):
        load_text(path)


def test_invalid_utf8_names_the_byte_offset(tmp_path):
    path = tmp_path / "t.txt"
    path.write_bytes("héllo".encode() + b"\x80rest")
    with pytest.raises(UserError, match="byte offset 6"):
        load_text(path)


def test_directory_is_not_a_text_file(tmp_path):
    with pytest.raises(UserError, match="directory"):
        load_text(tmp_path)


def test_char_vocabulary_handles_any_unicode():
    text = "Grüße, мир! ☃ 日本語\n"
    v = Vocabulary.from_text(text)
    assert v.decode(v.encode(text)) == text
    assert len(v) == len(set(text))
    assert v.tokens == sorted(v.tokens)
    assert Vocabulary.from_json(v.to_json()) == v


def test_unknown_characters_are_listed():
    v = Vocabulary.from_text("hello")
    assert v.unknown("help!") == ["!", "p"]
    with pytest.raises(UserError, match=r"'!', 'p'"):
        v.encode("help!")


def test_word_vocabulary_caps_size_and_maps_rare_words_to_unk():
    text = "the cat sat on the mat .\nthe dog sat .\n"
    v = Vocabulary.from_text(text, "word", max_size=5)
    assert len(v) == 5 and v.tokens[-1] == UNK
    assert set(v.tokens[:-1]) == {"the", "sat", ".", "\n"}  # the four most frequent
    ids = v.encode("the zebra sat")
    assert v.decode(ids) == "the <unk> sat"
    full = Vocabulary.from_text(text, "word")
    assert full.decode(full.encode(text)) == "the cat sat on the mat .\nthe dog sat .\n"


def test_split_keeps_the_last_tenth_for_validation():
    ids = torch.arange(1000)
    train, val = split_train_val(ids, 0.1)
    assert len(val) == 100 and val[0] == 900 and train[-1] == 899
    train, val = split_train_val(ids, 0.0)
    assert len(train) == 1000 and len(val) == 0


def test_stream_chunks_continue_each_stream():
    ids = torch.arange(1001)
    b = StreamBatches(ids, batch_size=4, seq_len=10)
    assert b.stream_length == 250 and len(b) == 25
    for k in range(len(b) - 1):
        x0, y0 = b[k]
        x1, _ = b[k + 1]
        assert x0.shape == (4, 10)
        assert torch.equal(y0, x0 + 1)  # targets are the next tokens
        assert torch.equal(x1[:, 0], x0[:, -1] + 1)  # chunk k+1 continues chunk k
    # the streams are contiguous, disjoint pieces of the text
    assert torch.equal(b.inputs[:, 0], torch.tensor([0, 250, 500, 750]))


def test_too_little_text_for_one_batch():
    assert min_tokens(4, 10) == 41
    StreamBatches(torch.arange(41), 4, 10)
    with pytest.raises(ValueError, match="at least 41"):
        StreamBatches(torch.arange(40), 4, 10)


def test_eval_chunks_cover_the_text():
    ids = torch.arange(1003)
    seen = [y for _, y in eval_chunks(ids, batch_size=4, seq_len=32)]
    targets = torch.cat([y.reshape(-1) for y in seen])
    assert len(targets) >= 1003 - 1 - 3  # at most streams - 1 tokens left out
    assert len(set(targets.tolist())) == len(targets)
    short = list(eval_chunks(torch.arange(5), batch_size=64, seq_len=100))
    assert len(short) == 1 and short[0][1].tolist() == [[1, 2, 3, 4]]
