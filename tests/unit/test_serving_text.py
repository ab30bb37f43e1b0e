"""Incremental detokenization and stop strings (shared by the transformers engine and the test fake)."""

from __future__ import annotations

import pytest

from openchat_core.serving.engines.text import ChoiceText, IncrementalDetokenizer, StopStringMatcher


@pytest.fixture(scope="module")
def tok(mistral_tokenizer):
    from tokenizers import Tokenizer

    return Tokenizer.from_str(mistral_tokenizer.backend_tokenizer.to_str())


def test_first_token_keeps_its_word_boundary_space_like_vllm(tok):
    prompt = tok.encode("GPT4 Correct Assistant:", add_special_tokens=False).ids
    detok = IncrementalDetokenizer(tok, prompt)
    pieces = [detok.push(t) for t in tok.encode("Hello world", add_special_tokens=False).ids]
    assert pieces == [" Hello", " world"]


def test_incomplete_characters_are_held_back(tok):
    ids = tok.encode("é🦜x", add_special_tokens=False).ids  # the parrot is four byte-fallback pieces
    detok = IncrementalDetokenizer(tok, [1])
    pieces = [detok.push(t) for t in ids]
    assert "".join(pieces) + detok.flush() == "é🦜x"
    assert len(ids) > 2 and pieces.count("") >= 1  # some pieces waited for the rest of their character
    assert all("\ufffd" not in p for p in pieces)


def test_special_tokens_are_not_text(tok):
    detok = IncrementalDetokenizer(tok, [1])
    assert detok.push(32000) == ""  # <|end_of_turn|>


@pytest.mark.parametrize(("chunks", "stops", "emitted", "stopped"), [
    (["Hello", " wor", "ld! Bye"], ["world"], "Hello ", True),
    (["ab", "cd"], ["x"], "abcd", False),
    (["The answer", " is 4.", "\n\nQ:"], ["\n\nQ:", "###"], "The answer is 4.", True),
    (["a#", "#", "#b"], ["###"], "a", True),
])
def test_stop_strings_cut_the_text_and_never_leak_a_prefix(chunks, stops, emitted, stopped):
    matcher = StopStringMatcher(stops)
    out, hit = "", False
    for chunk in chunks:
        piece, hit = matcher.feed(chunk)
        out += piece
        if hit:
            break
    if not hit:
        out += matcher.flush()
    assert (out, hit) == (emitted, stopped)


def test_the_tail_that_could_start_a_stop_string_is_held_back():
    matcher = StopStringMatcher(["STOP"])
    assert matcher.feed("abcST") == ("ab", False)  # len("STOP") - 1 characters are held, as vLLM does
    assert matcher.feed("x") == ("c", False)
    assert matcher.feed("STO") == ("STx", False)
    assert matcher.feed("P and more") == ("", True)  # the stop string and everything after it are dropped


def test_choice_text_combines_both(tok):
    text = ChoiceText(tok, [1], ["world"])
    out = ""
    for t in tok.encode("Hello world again", add_special_tokens=False).ids:
        piece, stopped = text.push(t)
        out += piece
        if stopped:
            break
    assert stopped and out == "Hello "  # after BOS alone there is no word boundary to keep
