"""Alignment between members' tokenizers: pure functions of tokenizers and backends.

- :mod:`.vocabulary`: token bytes, special ids and fingerprints of a tokenizer.
- :mod:`.mined`: :class:`~.mined.VocabMap`, the MinED vocabulary map (the authors' way), with
  :mod:`.mined_index`, its exact nearest-token search.
- :mod:`.natural`: a member reading its own tokenization of the text (natural alignment).
- :mod:`.projection`: a member's next-token distribution, read at its own token
  boundaries, as scores over the reference vocabulary.
"""
