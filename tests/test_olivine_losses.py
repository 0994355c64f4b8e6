"""OLIVINE pieces: SupCon, the vMF normaliser and KL term, the moving class statistics and DCAS, each
against a slow transcription of its equation (values and gradients); the weak-label noise model and files."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from lidar_ssl_core.data.weak_labels import MaskFiles
from lidar_ssl_core.errors import DatasetError
from lidar_ssl_core.losses.olivine import (
    ClassStatistics,
    dcas_sample,
    dcas_weights,
    kernel_density,
    log_bessel_iv,
    log_vmf_normaliser,
    sra_kappa,
    supcon_loss,
    vmf_kl_loss,
)
from lidar_ssl_core.synth import classes as C
from lidar_ssl_core.synth.weak_masks import MaskNoise, noisy_mask

D = torch.float64


def _unit(n: int, c: int, g: torch.Generator) -> torch.Tensor:
    return torch.nn.functional.normalize(torch.randn(n, c, generator=g, dtype=D), dim=1)


def test_supcon_matches_its_equation_values_and_gradients() -> None:
    g = torch.Generator().manual_seed(0)
    q, k = _unit(9, 4, g).requires_grad_(True), _unit(9, 4, g).requires_grad_(True)
    labels = torch.tensor([0, 1, 0, 2, 1, 1, 0, 3, 2])
    tau = 0.3
    fast = supcon_loss(q, k, labels, tau)
    total = q.new_zeros(())
    for i in range(9):
        a = [j for j in range(9) if labels[j] == labels[i]]
        num = torch.stack([torch.exp(q[i] @ k[j] / tau) for j in a]).sum() / len(a)
        den = torch.stack([torch.exp(q[i] @ k[j] / tau) for j in range(9)]).sum()
        total = total - torch.log(num / den)
    slow = total / 9
    torch.testing.assert_close(fast, slow)
    for a_, b_ in zip(torch.autograd.grad(fast, (q, k)), torch.autograd.grad(slow, (q, k)), strict=True):
        torch.testing.assert_close(a_, b_)


def test_vmf_normaliser_and_kl_match_their_equations() -> None:
    kappa = torch.tensor([0.5, 3.0, 40.0, 400.0], dtype=D)
    # Eq. 5 summed term by term in plain python, for moderate arguments
    for v, x in ((31.0, 3.0), (31.0, 40.0), (1.5, 0.5)):
        series = sum(
            math.exp((2 * m + v) * math.log(x / 2) - math.lgamma(m + 1) - math.lgamma(v + m + 1))
            for m in range(150)
        )
        assert float(log_bessel_iv(v, torch.tensor([x], dtype=D))[0]) == pytest.approx(
            math.log(series), rel=1e-10
        )
    special = pytest.importorskip("scipy.special")
    for kap in kappa.tolist():  # large kappa: against the exponentially scaled Bessel function
        expected = math.log(special.ive(31.0, kap)) + kap
        assert float(log_bessel_iv(31.0, torch.tensor([kap], dtype=D))[0]) == pytest.approx(
            expected, rel=1e-9
        )
    dim = 64
    log_k = log_vmf_normaliser(kappa, dim)
    for kap, got in zip(kappa.tolist(), log_k.tolist(), strict=True):
        want = (
            (dim / 2 - 1) * math.log(kap)
            - dim / 2 * math.log(2 * math.pi)
            - math.log(special.ive(31.0, kap))
            - kap
        )
        assert got == pytest.approx(want, rel=1e-9)
    r = torch.tensor([0.1, 0.5, 0.9], dtype=D)
    torch.testing.assert_close(sra_kappa(r, dim), r * (dim - r**2) / (1 - r**2))

    g = torch.Generator().manual_seed(1)
    feats = _unit(6, 5, g).requires_grad_(True)
    labels = torch.tensor([0, 2, 2, 1, 0, 2])
    mu = _unit(3, 5, g)
    kap = torch.tensor([2.0, 5.0, 9.0], dtype=D)
    fast = vmf_kl_loss(feats, labels, mu, kap)
    per = [
        -log_vmf_normaliser(kap[labels[i] : labels[i] + 1], 5)[0]
        - kap[labels[i]] * (mu[labels[i]] @ feats[i])
        for i in range(6)
    ]
    slow = torch.stack(per).mean()
    torch.testing.assert_close(fast, slow)
    torch.testing.assert_close(torch.autograd.grad(fast, feats)[0], torch.autograd.grad(slow, feats)[0])


def test_class_statistics_follow_the_moving_average_and_give_mu_and_kappa() -> None:
    stats = ClassStatistics(num_classes=3, dim=2, alpha=0.9)
    feats = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]], dtype=D)
    stats.update(feats, torch.tensor([0, 0, 2]))
    stats.update(torch.tensor([[0.0, 1.0]], dtype=D), torch.tensor([0]))
    zbar0 = 0.9 * (0.1 * torch.tensor([0.5, 0.5], dtype=D)) + 0.1 * torch.tensor([0.0, 1.0], dtype=D)
    torch.testing.assert_close(stats.mean[0], zbar0)
    torch.testing.assert_close(stats.mean[2], 0.1 * torch.tensor([1.0, 0.0], dtype=D))
    mu, kappa, known = stats.parameters_vmf()
    assert known.tolist() == [True, False, True]
    torch.testing.assert_close(mu[0], zbar0 / zbar0.norm())
    torch.testing.assert_close(kappa[2], sra_kappa(torch.tensor(0.1, dtype=D), 2))


def test_dcas_weights_match_their_equation_and_favour_rare_far_classes() -> None:
    g = torch.Generator().manual_seed(2)
    d = torch.rand(40, generator=g, dtype=D) * 50
    labels = torch.randint(0, 3, (40,), generator=g)
    h = 1.06 * float(d.std()) * 40 ** (-0.2)
    density = [
        sum(math.exp(-0.5 * ((float(d[i]) - float(d[j])) / h) ** 2) for j in range(40))
        / (40 * h * math.sqrt(2 * math.pi))
        for i in range(40)
    ]
    counts = [int((labels == labels[i]).sum()) for i in range(40)]
    slow = torch.tensor([1.0 / (density[i] * counts[i]) for i in range(40)], dtype=D)
    torch.testing.assert_close(dcas_weights(d, labels), slow)
    big = torch.rand(20000, generator=g, dtype=D) * 80  # above the exact limit: the histogram KDE
    sub = big[:500]
    h_big = 1.06 * float(big.std()) * 20000 ** (-0.2)
    slow_big = torch.exp(-0.5 * ((sub[:, None] - big[None, :]) / h_big) ** 2).sum(1) / (
        20000 * h_big * math.sqrt(2 * math.pi)
    )
    torch.testing.assert_close(kernel_density(big)[:500], slow_big, rtol=2e-2, atol=0.0)
    # a rare class at a sparse distance is drawn far more often than its share
    d2 = torch.cat(
        [
            torch.full((300,), 5.0, dtype=D) + torch.rand(300, generator=g, dtype=D),
            torch.tensor([60.0] * 5, dtype=D),
        ]
    )
    l2 = torch.cat([torch.zeros(300, dtype=torch.long), torch.ones(5, dtype=torch.long)])
    picked = dcas_sample(d2, l2, 20, torch.Generator().manual_seed(3))
    assert torch.unique(picked).numel() == 20 and int((picked >= 300).sum()) == 5


def test_noisy_masks_follow_the_noise_model() -> None:
    rng = np.random.default_rng(0)
    exact = np.zeros((60, 80), np.uint8)
    exact[30:, :] = C.ROAD
    exact[20:40, 10:30] = C.CAR
    exact[10:30, 50:70] = C.BUILDING
    clean = noisy_mask(exact, MaskNoise(miss_prob=0, confusion_prob=0, edge_px=0, pixel_prob=0), rng)
    assert int((clean == 255).sum()) == int((exact == 0).sum())  # only the unprompted sky is unlabelled
    assert np.array_equal(clean[exact > 0], exact[exact > 0])
    noisy = noisy_mask(exact, MaskNoise(), np.random.default_rng(1))
    labelled = (noisy != 255) & (exact > 0)
    accuracy = float((noisy[labelled] == exact[labelled]).mean())
    assert 0.5 < accuracy < 1.0  # edges moved, some pixels flipped
    again = noisy_mask(exact, MaskNoise(), np.random.default_rng(1))
    assert np.array_equal(noisy, again)
    missed = noisy_mask(exact, MaskNoise(miss_prob=1.0, confusion_prob=0, edge_px=0, pixel_prob=0), rng)
    assert bool((missed == 255).all())
    with pytest.raises(ValueError, match="miss_prob"):
        MaskNoise(miss_prob=1.5)


def test_mask_files_are_read_as_class_ids_and_bad_files_are_typed_errors(tmp_path: Path) -> None:
    import cv2

    folder = tmp_path / "bag" / "front"
    folder.mkdir(parents=True)
    mask = np.full((8, 10), 255, np.uint8)
    mask[4:, :] = 7
    cv2.imwrite(str(folder / "100.png"), mask)
    source = MaskFiles(tmp_path)
    got = source(np.zeros((16, 20, 3), np.uint8), camera="bag/front", stamp_ns=100)  # decoded at 2x
    assert got.shape == (16, 20) and set(np.unique(got).tolist()) == {7, 255}
    with pytest.raises(DatasetError, match=r"bag/front at 200.*200\.png"):
        source(np.zeros((8, 10, 3), np.uint8), camera="bag/front", stamp_ns=200)
    np.save(folder / "300.npy", np.full((8, 10), 300, np.int32))
    with pytest.raises(DatasetError, match=r"outside 0\.\.255"):
        source(np.zeros((8, 10, 3), np.uint8), camera="bag/front", stamp_ns=300)
    with pytest.raises(DatasetError, match="does not exist"):
        MaskFiles(tmp_path / "none")


def _statistics_worker(rank: int, world: int, store: str, out: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    feats = (
        torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=D) if rank == 0 else torch.tensor([[0.0, 1.0]], dtype=D)
    )
    labels = torch.tensor([0, 1]) if rank == 0 else torch.tensor([1])
    stats = ClassStatistics(num_classes=2, dim=2, alpha=0.5)
    stats.update(feats, labels)
    torch.save({"mean": stats.mean}, f"{out}.{rank}")
    dist.destroy_process_group()


def test_class_statistics_agree_between_processes_and_use_the_global_batch(tmp_path: Path) -> None:
    import torch.multiprocessing as mp

    mp.spawn(  # type: ignore[attr-defined,no-untyped-call]
        _statistics_worker, args=(2, str(tmp_path / "store"), str(tmp_path / "stats")), nprocs=2
    )
    means = [torch.load(tmp_path / f"stats.{r}", weights_only=True)["mean"] for r in range(2)]
    torch.testing.assert_close(means[0], means[1])
    # the global batch: class 0 = [1, 0] (one row), class 1 = [0, 1] (two rows); EMA from zero with alpha 0.5
    torch.testing.assert_close(means[0], torch.tensor([[0.5, 0.0], [0.0, 0.5]], dtype=D))


def test_weak_label_masks_recorded_in_the_bag_are_extracted_to_files(tmp_path: Path) -> None:
    from lidar_ssl_core.bag.writer import BagWriter
    from lidar_ssl_core.data.weak_labels import extract_weak_masks
    from lidar_ssl_core.msg.image import make_image

    mask = np.full((6, 8), 255, np.uint8)
    mask[3:, 2:] = 4
    with BagWriter(tmp_path / "drive") as writer:
        for camera in ("front", "back"):
            writer.add_topic(f"/cameras/{camera}/weak_labels", "sensor_msgs/msg/Image")
            for stamp in (100, 200):
                image = mask.copy()
                image[0, 0] = 1 if stamp == 200 else 255
                msg = make_image(writer.typestore, image, stamp, camera, encoding="mono8")
                writer.write(f"/cameras/{camera}/weak_labels", stamp, msg)
    written = extract_weak_masks(tmp_path / "drive", tmp_path / "masks")
    assert len(written) == 4
    source = MaskFiles(tmp_path / "masks")
    got = source(np.zeros((6, 8, 3), np.uint8), camera="drive/back", stamp_ns=200)
    assert int(got[5, 7]) == 4 and int(got[0, 0]) == 1 and int(got[0, 1]) == 255  # ids as recorded
    assert np.array_equal(source(np.zeros((6, 8, 3), np.uint8), camera="drive/front", stamp_ns=100), mask)
    with pytest.raises(DatasetError, match="no topic matching"):
        extract_weak_masks(tmp_path / "drive", tmp_path / "other", topic_pattern="/{camera}/semantic")
