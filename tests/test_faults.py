"""Fault campaign (slow tier): a 6-step run with evaluations and samples SIGKILLed at six
kinds of moment in turn, each rerun resuming, equal to an uninterrupted run (bitwise final
checkpoint, metrics rows, sample grid). Longer / random campaigns:
`python experiments/fault_campaign.py --kills=10 --steps=12`."""
import pytest

from tests.fault_runner import DEFAULT_MOMENTS, campaign


@pytest.mark.slow
def test_fault_campaign_six_kills_equal_uninterrupted(tmp_path):
  summary = campaign(str(tmp_path), DEFAULT_MOMENTS)
  assert [k["moment"] for k in summary["kills"]] == list(DEFAULT_MOMENTS)
  # in_save@4 held the commit of checkpoint 4: it was never committed by that run.
  in_save = next(k for k in summary["kills"] if k["moment"] == "in_save@4")
  assert 4 not in in_save["checkpoints"]
