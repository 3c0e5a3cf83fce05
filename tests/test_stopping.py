from __future__ import annotations

from packllm_integrations import Member
from packllm_integrations.decoding.stopping import Detokenizer, StopMatcher


def feed(matcher: StopMatcher, pieces: list[str]) -> str:
    return "".join(matcher.push(p) for p in pieces) + matcher.flush()


def test_stop_split_across_pieces_is_cut_and_never_emitted() -> None:
    m = StopMatcher(["\n\nUser:"])
    out = []
    for piece in ["Hello", " there", "\n", "\nUs", "er:", " more"]:
        out.append(m.push(piece))
    assert "".join(out) == "Hello there"
    assert m.stopped
    assert all("\n" not in o for o in out)


def test_held_back_text_is_released_when_no_stop_follows() -> None:
    m = StopMatcher(["END"])
    assert m.push("the E") == "the "
    assert m.push("ND") == ""  # completes the stop
    m2 = StopMatcher(["END"])
    assert m2.push("the E") == "the "
    assert m2.push("nd") == "End"
    assert feed(StopMatcher(["END"]), ["abc", "EN"]) == "abcEN"


def test_earliest_of_several_stops_wins() -> None:
    assert feed(StopMatcher(["b", "a"]), ["xxab"]) == "xx"
    assert feed(StopMatcher([]), ["a", "b"]) == "ab"


def test_detokenizer_handles_multibyte_characters(sp: Member, bl: Member) -> None:
    for member in (sp, bl):
        text = "Les élèves — café ☕ ok\n  x"
        ids = member.tokenizer(text, add_special_tokens=False)["input_ids"]
        detok = Detokenizer(member.tokenizer)
        pieces = [detok.add(i) for i in ids] + [detok.flush()]
        assert "".join(pieces) == member.tokenizer.decode(ids)
        assert all("\ufffd" not in p for p in pieces)


def test_detokenizer_keeps_leading_space_after_prompt(sp: Member) -> None:
    prompt_ids = sp.encode("Hello")
    ids = sp.tokenizer(" world", add_special_tokens=False)["input_ids"]
    detok = Detokenizer(sp.tokenizer, prompt_ids)
    assert "".join(detok.add(i) for i in ids) + detok.flush() == " world"
