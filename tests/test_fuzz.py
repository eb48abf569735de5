"""A short fuzzing run (bitsmith.fuzz) over the zoo's ONNX files: mutants must be imported, compiled or
refused with a bitsmith error, never crash or hang. The long run is `scripts/fuzz.py --cases 10000`
(docs/results/fuzz.md)."""

from bitsmith import fuzz

SHORT_RUN_CASES = 200
SHORT_RUN_SEED = 1  # the long run uses seed 0: this one covers other cases


def test_short_fuzzing_run_has_no_crash_and_no_hang():
    campaign = fuzz.fuzz(SHORT_RUN_CASES, SHORT_RUN_SEED, compile_share=0.15)
    assert campaign.failures == []
    assert campaign.crashes == 0 and campaign.hangs == 0
    assert campaign.counts.get("ok", 0) > 0 and campaign.counts.get("rejected", 0) > 0  # it explores both sides
    assert campaign.compiled > 0


def test_a_case_is_the_same_every_time():
    first, second = fuzz.make_case(0, 123), fuzz.make_case(0, 123)
    assert (first.model, first.mutations, first.blob) == (second.model, second.mutations, second.blob)
    assert fuzz.make_case(0, 124).blob != first.blob
