"""The lean training job: masked padding in the models, exact --resume, clear errors, the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
import torch
from typer.testing import CliRunner

from faceshard.app.cli import app
from faceshard.storage.commit import Output
from faceshard.storage.datasets import MissingColumnsError, ShardDataset
from faceshard.storage.manifest import plan_shards
from faceshard.storage.testing import fake_shard_tables, fake_videos
from faceshard.training import loop
from faceshard.training.models import MegatronNet, MintimeNet, SlotAttention

WEIGHTS = {"repvit": {"source": "hub:repvit", "fingerprint": "aaa", "random": True}}


def committed(root: Path, n_videos: int = 24, emb_dim: int | None = 8, depth: bool = False) -> str:
    out = Output.open(str(root), config={"embed": {"dtype": "float16"}}, weights=WEIGHTS)
    plans = plan_shards(fake_videos(n_videos, splits=("train", "train", "val")), 4)
    out.set_plan(plans)
    for plan in plans:
        tables = fake_shard_tables(plan, faces_per_video=5, emb_dim=emb_dim, seed=3)
        if depth:  # a depth embedding column beside emb_rgb (its negation)
            faces = tables["faces"]
            flipped = pc.negate(faces["emb_rgb"].combine_chunks().flatten())
            column = pa.FixedSizeListArray.from_arrays(flipped, emb_dim)
            tables["faces"] = faces.append_column("emb_depth", column)
        out.commit_shard(plan, tables, {})
    return str(root)


@pytest.fixture(scope="module")
def uri(tmp_path_factory: pytest.TempPathFactory) -> str:
    return committed(tmp_path_factory.mktemp("train") / "out")


def mintime_batch(tokens: int = 3, channels: int = 6) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    mask = torch.zeros(2, 16, dtype=torch.bool)
    mask[0, :5], mask[1, :11] = True, True
    return {
        "features": torch.randn(2, 16, tokens, channels, generator=g),
        "size_bucket": torch.randint(1, 21, (2, 16), generator=g) * mask,
        "identity": torch.randint(1, 3, (2, 16), generator=g) * mask,
        "positions": (torch.arange(16 * tokens).reshape(16, tokens) + 1).expand(2, -1, -1) * mask[:, :, None],
        "mask": mask,
    }


def scramble_padding(batch: dict[str, torch.Tensor], keys: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """Put arbitrary values into every padding slot (mask False) of `keys`."""
    g = torch.Generator().manual_seed(1)
    out = dict(batch)
    pad = ~batch["mask"]
    for key in keys:
        value = batch[key].clone()
        noise = (
            torch.randn(value.shape, generator=g) * 50
            if value.is_floating_point()
            else torch.randint(1, 3, value.shape, generator=g)
        )
        value[pad] = noise[pad].to(value.dtype)
        out[key] = value
    return out


def test_mintime_padding_never_reaches_attention() -> None:
    torch.manual_seed(0)
    model = MintimeNet(6, 3, max_identities=2).eval()
    batch = mintime_batch()
    keys = ("features", "size_bucket", "identity", "positions")
    with torch.no_grad():
        before = model(batch)
        after = model(scramble_padding(batch, keys))
        assert torch.allclose(before, after, atol=1e-6)
        # control: the same change with the padding left visible moves the output, so the check can fail
        visible = {"mask": torch.ones_like(batch["mask"])}
        scrambled = scramble_padding(batch, keys)
        assert not torch.allclose(model(batch | visible), model(scrambled | visible), atol=1e-3)


def test_temporal_attention_stays_in_an_identity_and_frame_attention_in_a_frame() -> None:
    """MINTIME's identity mask, and the frame attention: a slot reads only the slots its mask allows."""
    torch.manual_seed(0)
    attention = SlotAttention(8, 2, dropout=0.0).eval()
    identity = torch.tensor([[1, 1, 1, 2, 2, 2]])  # two persons on frames 1, 2, 3
    frame = torch.tensor([[1, 2, 3, 1, 2, 3]])
    other_identity = identity[:, :, None] != identity[:, None, :]
    other_frame = frame[:, :, None] != frame[:, None, :]
    x = torch.randn(1, 6, 3, 8)
    moved = x.clone()
    moved[:, 3] = torch.randn(3, 8)  # person 2 on frame 1 changes
    with torch.no_grad():
        by_identity = attention(moved, other_identity) - attention(x, other_identity)
        by_frame = attention(moved, other_frame) - attention(x, other_frame)
    changed = lambda d: (d.abs().amax(dim=(0, 2, 3)) > 1e-5).tolist()  # noqa: E731
    assert changed(by_identity) == [False, False, False, True, True, True]  # person 2's slots only
    assert changed(by_frame) == [True, False, False, True, False, False]  # frame 1's faces only


def test_megatron_padding_never_reaches_attention() -> None:
    torch.manual_seed(0)
    model = MegatronNet(8, 8, length=20).eval()
    mask = torch.zeros(2, 20, dtype=torch.bool)
    mask[0, :7], mask[1, :20] = True, True
    batch = {"rgb": torch.randn(2, 20, 8), "depth": torch.randn(2, 20, 8), "mask": mask}
    with torch.no_grad():
        assert torch.allclose(model(batch), model(scramble_padding(batch, ("rgb", "depth"))), atol=1e-6)


def test_every_padding_slot_of_real_samples_is_masked_in_the_model(uri: str) -> None:
    """On samples from the dataset: masked slots are exactly the padding, and scrambling them is inert."""
    samples = list(ShardDataset(uri, "train", kind="mintime", shuffle=False))
    batch = {
        k: torch.stack([s[k] for s in samples])
        for k in ("features", "size_bucket", "identity", "positions", "mask")
    }
    assert (batch["mask"].sum(1) == 5).all()
    torch.manual_seed(0)
    model = MintimeNet(8, 1).eval()
    with torch.no_grad():
        scrambled = scramble_padding(batch, ("features", "size_bucket", "identity", "positions"))
        assert torch.allclose(model(batch), model(scrambled), atol=1e-5)


def weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path / loop.CHECKPOINT, weights_only=False)["model"]


def test_resume_after_an_interrupted_run_ends_with_the_same_weights(
    uri: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = loop.TrainSettings(model="mintime", epochs=3, batch_size=4, shuffle_buffer=4)
    full = loop.train(uri, settings, out=tmp_path / "full")

    real_epoch = loop._train_epoch
    calls = {"n": 0}

    def dies_in_epoch_three(model, optimiser, dataset, settings_, device):
        calls["n"] += 1
        if calls["n"] == 3:  # the process dies half way through epoch 3, after some updates
            batch = next(iter(loop._batches(dataset, settings_)))
            loss = model(batch).sum()
            loss.backward()
            optimiser.step()
            raise KeyboardInterrupt
        return real_epoch(model, optimiser, dataset, settings_, device)

    monkeypatch.setattr(loop, "_train_epoch", dies_in_epoch_three)
    with pytest.raises(KeyboardInterrupt):
        loop.train(uri, settings, out=tmp_path / "cut")
    monkeypatch.setattr(loop, "_train_epoch", real_epoch)
    assert torch.load(tmp_path / "cut" / loop.CHECKPOINT, weights_only=False)["epoch"] == 2

    resumed = loop.train(uri, settings, out=tmp_path / "cut", resume=True)
    assert resumed["resumed_from_epoch"] == 2 and resumed["epochs"] == 3
    a, b = weights(tmp_path / "full"), weights(tmp_path / "cut")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    for key in ("train_loss", "val_auc", "val_accuracy"):
        assert [h[key] for h in resumed["history"]] == [h[key] for h in full["history"]]


def test_checkpoint_is_not_overwritten_without_resume_and_settings_must_match(
    uri: str, tmp_path: Path
) -> None:
    settings = loop.TrainSettings(model="megatron", epochs=1, batch_size=4)
    with pytest.raises(MissingColumnsError, match=r"emb_depth.*--set depth.enabled=true"):
        loop.train(uri, settings, out=tmp_path)
    settings = loop.TrainSettings(model="mintime", epochs=1, batch_size=4)
    loop.train(uri, settings, out=tmp_path)
    with pytest.raises(loop.TrainingError, match="--resume"):
        loop.train(uri, settings, out=tmp_path)
    other = loop.TrainSettings(model="mintime", epochs=2, batch_size=8)
    with pytest.raises(loop.TrainingError, match="batch_size: 4 → 8"):
        loop.train(uri, other, out=tmp_path, resume=True)


def test_cli_train_json_and_clear_errors(uri: str, tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(app, ["train", uri, "--epochs", "2", "--out", str(tmp_path / "ck"), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    for key in ("train_loss", "val_auc", "val_accuracy", "epochs", "model", "random_weights"):
        assert key in summary
    assert (
        summary["model"] == "mintime" and summary["epochs"] == 2 and summary["random_weights"] == ["repvit"]
    )
    assert summary["val_splits"] == ["val"] and summary["val_videos"] == 8
    assert set(summary["val_per_method"]) == {"deepfakes"}
    method = summary["val_per_method"]["deepfakes"]
    # A method is scored as a test set of its fakes and every real: accuracy counts the reals too.
    assert method["videos"] + method["reals"] == summary["val_videos"]  # the split's only method
    assert method["accuracy"] == pytest.approx(summary["val_accuracy"])
    assert method["auc"] == pytest.approx(summary["val_auc"])
    assert (tmp_path / "ck" / loop.CHECKPOINT).exists()

    bare = committed(tmp_path / "bare", n_videos=6, emb_dim=None)
    failed = runner.invoke(app, ["train", bare, "--model", "mintime"])
    assert failed.exit_code == 3 and "--set embed.output=tokens" in failed.output
    assert "--rebuild" in failed.output and "Traceback" not in failed.output

    probe = runner.invoke(app, ["train", uri, "--model", "probe", "--epochs", "20", "--json"])
    assert probe.exit_code == 0, probe.output
    assert {"train_loss", "val_auc", "val_accuracy"} <= set(json.loads(probe.stdout))


def test_megatron_trains_on_rgb_and_depth_embeddings(tmp_path: Path) -> None:
    uri = committed(tmp_path / "depth", n_videos=12, depth=True)
    sample = next(iter(ShardDataset(uri, "train", kind="megatron_identity", shuffle=False)))
    assert sample["rgb"].shape == (20, 8) and sample["mask"].sum() == 5
    assert torch.equal(sample["depth"][:5], -sample["rgb"][:5])
    result = loop.train(
        uri, loop.TrainSettings(model="megatron", epochs=2, batch_size=4), out=tmp_path / "ck"
    )
    assert result["model"] == "megatron" and result["epochs"] == 2 and result["val_videos"] == 4
    assert result["train_loss"] > 0 and result["val_auc"] is not None


def test_per_method_metrics_score_each_methods_fakes_against_every_real() -> None:
    """A detector that catches only one method: that method scores perfectly, the other at chance.
    Counting only fakes (the old per-method accuracy) called the missed method 0.0 and the caught one
    1.0 without ever seeing a real; here every method's accuracy and AUC include the reals."""
    methods = ["", "", "", "", "caught", "caught", "missed", "missed"]
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    scores = np.array([0.1, 0.2, 0.3, 0.4, 0.9, 0.8, 0.2, 0.3])
    result = loop.video_metrics(methods, labels, scores)
    caught, missed = result["val_per_method"]["caught"], result["val_per_method"]["missed"]
    assert caught == {"videos": 2, "reals": 4, "auc": 1.0, "accuracy": 1.0, "detected": 1.0}
    assert missed["videos"] == 2 and missed["reals"] == 4 and missed["detected"] == 0.0
    assert missed["accuracy"] == pytest.approx(4 / 6)  # the four reals right, both fakes missed
    assert missed["auc"] == pytest.approx(0.5)  # its fakes rank among the reals: chance
    assert result["val_accuracy"] == pytest.approx(6 / 8)
