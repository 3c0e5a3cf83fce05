"""Which span of the prompt a prompt perplexity covers: the same for every member.

A member whose tokenizer adds no BOS token has nothing before the text's first token, so
that token is scored only when every member has a BOS to predict it from; a member reads
its own start of text in "mined" alignment too (no translated BOS).
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch

from packllm_integrations import Member, PackEngine
from packllm_integrations.decoding.planning import leading_specials
from tests import tiny

PROMPTS = ["The function returns the value of the", "import os\nimport sys\n\ndef main(", "A class is a thing"]


@pytest.fixture(scope="module")
def sp_nobos() -> Member:
    return tiny.sentencepiece_member_without_bos()


def _perplexity(pack: list[Member], name: str, **settings: object) -> list[float]:
    engine = PackEngine(pack, progress=False, reference=pack[0].name, **settings)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return [w.prompt_perplexity[name] for w in engine.weights_batch(PROMPTS)]


@pytest.mark.parametrize("alignment", ["mined", "natural"])
@pytest.mark.parametrize("scoring", ["reference", "own"])
def test_a_members_perplexity_ignores_whether_the_reference_adds_a_bos(
    bl: Member, sp: Member, sp_nobos: Member, alignment: str, scoring: str
) -> None:
    assert leading_specials(sp, sp.encode(PROMPTS[0])) == 1 and leading_specials(sp_nobos, sp_nobos.encode("a")) == 0
    with_bos = _perplexity([sp, bl], bl.name, alignment=alignment, scoring=scoring)
    without = _perplexity([sp_nobos, bl], bl.name, alignment=alignment, scoring=scoring)
    for a, b in zip(with_bos, without, strict=True):
        assert math.isclose(a, b, rel_tol=1e-5), (a, b)


def test_the_first_text_token_is_context_when_a_member_has_no_bos(bl: Member, sp: Member, sp_nobos: Member) -> None:
    """The reference's (sp's) own perplexity in a mixed pack is over its text tokens after the first."""
    ids = sp.encode(PROMPTS[0])
    with torch.no_grad():
        logits = sp.model(torch.tensor([ids])).logits[0].float()
    nll = torch.nn.functional.cross_entropy(logits[1:-1], torch.tensor(ids[2:]))
    got = _perplexity([sp, bl], sp.name, alignment="mined")[0]
    assert math.isclose(got, math.exp(float(nll)), rel_tol=1e-4)


def test_a_pack_of_bos_members_scores_the_first_text_token(sp: Member) -> None:
    other = tiny.sentencepiece_member("tiny-sentencepiece-b", seed=5)
    ids = sp.encode(PROMPTS[0])
    with torch.no_grad():
        logits = sp.model(torch.tensor([ids])).logits[0].float()
    nll = torch.nn.functional.cross_entropy(logits[:-1], torch.tensor(ids[1:]))  # from the BOS on, as always
    got = _perplexity([sp, other], sp.name)[0]
    assert math.isclose(got, math.exp(float(nll)), rel_tol=1e-4)


def test_mined_members_read_their_own_start_of_text(bl: Member, sp: Member) -> None:
    engine = PackEngine([sp, bl], progress=False, reference=sp.name, alignment="mined")
    session = engine.session([PROMPTS[0]])
    session.prefill()
    plan = session.rows[0].plan
    ref_ids = sp.encode(PROMPTS[0])
    assert plan.inputs[0] == ref_ids and plan.shifts == [0, -1]
    assert plan.inputs[1] == engine.vocab_map(0, 1).input[torch.tensor(ref_ids[1:])].tolist()  # no BOS for bl
    engine = PackEngine([bl, sp], progress=False, reference=bl.name, alignment="mined")
    session = engine.session([PROMPTS[0]])
    session.prefill()
    plan = session.rows[0].plan
    assert plan.inputs[1][0] == sp.tokenizer.bos_token_id and plan.shifts == [0, 1]  # sp starts with its BOS


@pytest.mark.parametrize("alignment", ["mined", "natural"])
def test_scoring_after_an_empty_context_works_for_members_without_a_bos(bl: Member, sp: Member, alignment: str) -> None:
    engine = PackEngine([sp, bl], progress=False, reference=sp.name, alignment=alignment)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        (result,) = engine.score([("", "The function returns")])
    assert result.tokens == len(sp.encode("The function returns")) - 1 and math.isfinite(result.logprob)
