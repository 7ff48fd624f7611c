"""Settings added after outputs were built keep those outputs' fingerprints; a rule whose meaning
changed gets a new one. The trees below are what `row_affecting()` gave before the settings existed
(faceshard at 7e8c439), written out so this test does not depend on the code it checks."""

from __future__ import annotations

from faceshard.config import load_config


def test_settings_at_their_added_defaults_leave_the_tree_as_older_outputs_have_it() -> None:
    tree = load_config("demo").row_affecting()
    assert "normalise" not in tree["embed"]  # embed.normalise=model: what every older output holds
    assert "normalise" not in tree["depth"] and "processor" not in tree["depth"]
    changed = load_config("demo", overrides=["depth.normalise=max"]).row_affecting()
    assert changed["depth"]["normalise"] == "max"


def test_align_changed_meaning_so_its_rows_get_a_new_fingerprint_and_arcface_keeps_the_old_one() -> None:
    old_align = {"method": "align:256"}  # an older deepfakebench output: ArcFace's points
    arcface = load_config("deepfakebench", overrides=["crop.method=arcface:256"]).row_affecting()
    align = load_config("deepfakebench").row_affecting()
    assert arcface["crop"]["method"] == old_align["method"] and "align_rule" not in arcface["crop"]
    assert align["crop"]["method"] == "align:256" and align["crop"]["align_rule"] == "deepfakebench"
    assert arcface != align
