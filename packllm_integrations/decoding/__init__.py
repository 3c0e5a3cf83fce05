"""Decoding: one request's session and the pure functions its steps use.

- :mod:`.session`: :class:`Session`, the step loop (prefill, weights, choose, accept, feed).
- :mod:`.aligners`: one aligner per member: how it reads the text and the chosen tokens, and
  its next-token scores in each prompt's reference vocabulary.
- :mod:`.planning`: each prompt's reference member and what every member reads.
- :mod:`.prompt_weights`: the members' prompt log-likelihoods and the prompt's weights
  (generation and scoring share it, fault checks included).
- :mod:`.scoring`: fused log-likelihoods of continuations (``PackEngine.score``).
- :mod:`.weighting`, :mod:`.fusion`, :mod:`.sampling`, :mod:`.stopping`: pure functions.
- :mod:`.rows`, :mod:`.faults`, :mod:`.stepping`: a prompt's state, failing members, threads.
"""
