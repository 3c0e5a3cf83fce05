"""Members that wait on a server or a GPU step at the same time; CPU members step here."""

from __future__ import annotations

import threading

import pytest

from packllm_integrations import Member
from packllm_integrations.decoding.stepping import Stepper


def test_concurrent_calls_run_at_the_same_time_and_the_rest_in_this_thread() -> None:
    both = threading.Barrier(2, timeout=10)  # passes only when both calls wait at once

    def waiting(k: int) -> str:
        both.wait()
        return f"{k}:{threading.current_thread().name}"

    stepper = Stepper(2)
    out = stepper.run(
        {0: lambda: waiting(0), 1: lambda: threading.current_thread().name, 2: lambda: waiting(2)}, {0, 2}
    )
    stepper.close()
    assert list(out) == [0, 1, 2] and out[1] == threading.current_thread().name
    assert out[0].startswith("0:packllm-step") and out[2].startswith("2:packllm-step")


def test_a_failing_call_raises_from_run() -> None:
    stepper = Stepper(1)
    with pytest.raises(ZeroDivisionError):
        stepper.run({0: lambda: 1 / 0}, {0})
    stepper.close()


def test_transformers_members_on_the_cpu_step_in_the_calling_thread(bl: Member) -> None:
    assert bl.concurrent is False  # on a GPU it would be True: members on several devices overlap
