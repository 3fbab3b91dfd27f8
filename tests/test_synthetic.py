"""The synthetic micro-Doppler dataset: gait physics, radar image, users, determinism and the writer."""

from __future__ import annotations

import dataclasses
import json
import time

import numpy as np
import pytest
from PIL import Image

from aetune.data.synthetic import (
    GaitStyle,
    UserProfile,
    draw_user,
    generate_microdoppler_dataset,
    image_rng,
    render_image,
    simulate_spectrogram,
)
from aetune.data.synthetic.radar import (
    DEFAULT_RADAR,
    SEGMENT_NAMES,
    ellipsoid_rcs,
    jet_lut,
)
from aetune.data.synthetic.walker import JOINTS, LEG, SHANK, THIGH, gait_timing, walk

# A nominal adult walking at a usual pace, with neutral style and gains.
NOMINAL = UserProfile(1, 1.72, 1.3, GaitStyle(), (1.0,) * len(SEGMENT_NAMES))


def _files(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*.png"))}


def test_gait_timing_follows_boulic_formulas():
    timing = gait_timing(1.72, 1.3)
    rv = 1.3 / (0.491 * 1.72)
    assert timing.relative_speed == pytest.approx(rv)
    assert timing.cycle_s == pytest.approx(1.346 * np.sqrt(rv) / rv)
    assert timing.stride_m == pytest.approx(1.346 * np.sqrt(rv) * 0.491 * 1.72)
    assert timing.support_fraction == pytest.approx((0.752 * timing.cycle_s - 0.143) / timing.cycle_s)
    assert gait_timing(1.72, 1.3, cadence=1.05).cycle_s == pytest.approx(timing.cycle_s / 1.05)
    with pytest.raises(ValueError, match="relative speed"):
        gait_timing(1.72, 5.0)


def test_walker_keeps_segment_lengths_and_walks_at_speed():
    timing = gait_timing(1.72, 1.3)
    t = np.linspace(0.0, 2 * timing.cycle_s, 2001)
    joints = walk(t, 1.72, 1.3, start_phase=0.3)
    assert set(joints) == set(JOINTS)
    for side in "rl":
        thigh = np.linalg.norm(joints[f"knee_{side}"] - joints[f"hip_{side}"], axis=1)
        shank = np.linalg.norm(joints[f"ankle_{side}"] - joints[f"knee_{side}"], axis=1)
        np.testing.assert_allclose(thigh, THIGH * 1.72, rtol=1e-9)
        np.testing.assert_allclose(shank, SHANK * 1.72, rtol=1e-9)
    # Over whole cycles the pelvis advances speed * time; its height oscillates just below Ht.
    advance = joints["pelvis"][-1, 0] - joints["pelvis"][0, 0]
    assert advance == pytest.approx(1.3 * t[-1], rel=1e-6)
    bounce = joints["pelvis"][:, 2]
    assert bounce.max() == pytest.approx(LEG * 1.72, abs=1e-3)
    assert bounce.max() - bounce.min() == pytest.approx(2 * 0.015 * timing.relative_speed * LEG * 1.72, rel=0.01)


def test_ellipsoid_rcs_matches_sphere_and_broadside():
    theta = np.linspace(0.0, np.pi, 7)
    np.testing.assert_allclose(ellipsoid_rcs(0.2, 0.2, 0.2, theta, 0.3), np.pi * 0.2**2)
    # Broadside to the long axis (theta = 90 deg) a prolate ellipsoid shows pi c^2, end-on pi a^4 / c^2.
    assert ellipsoid_rcs(0.1, 0.1, 0.5, np.pi / 2, 0.0) == pytest.approx(np.pi * 0.5**2)
    assert ellipsoid_rcs(0.1, 0.1, 0.5, 0.0, 0.0) == pytest.approx(np.pi * 0.1**4 / 0.5**2)


@pytest.mark.parametrize("image_index", [0, 1])
def test_spectrogram_shows_torso_band_and_feet(image_index):
    sim = simulate_spectrogram(NOMINAL, image_rng(7, 1, image_index))
    spec, speed = sim.spectrogram, NOMINAL.speed_mps * sim.jitter.speed_factor
    v = spec.velocity_mps
    assert spec.power_db.shape == (len(v), len(spec.time_s))
    assert spec.power_db.max() == 0.0 and spec.power_db.min() >= -DEFAULT_RADAR.dynamic_range_db
    assert v[0] == pytest.approx(-6.0, abs=0.06) and v[-1] == pytest.approx(6.0, abs=0.06)
    # The strongest return averaged over time is the torso band at the walking speed.
    band = v[np.argmax(spec.power_db.mean(axis=1))]
    assert band == pytest.approx(speed, rel=0.15)
    # Feet: true radial velocity peaks at 3-4.5x the speed; the spectrogram's upper envelope reaches
    # about 3x and oscillates twice per gait cycle (one swing per foot).
    feet = sim.radial_velocity_mps[:, [SEGMENT_NAMES.index("foot_r"), SEGMENT_NAMES.index("foot_l")]]
    assert 3.0 <= feet.max() / speed <= 4.5
    envelope = np.array([v[np.nonzero(col > -30.0)[0].max()] for col in spec.power_db.T])
    assert envelope.max() >= 3.0 * speed
    dt = spec.time_s[1] - spec.time_s[0]
    freq = np.fft.rfftfreq(4096, dt)
    power = np.abs(np.fft.rfft((envelope - envelope.mean()) * np.hanning(envelope.size), 4096))
    power[freq < 0.5] = 0.0
    assert freq[np.argmax(power)] * sim.timing.cycle_s == pytest.approx(2.0, abs=0.15)


def test_image_is_rgb_uint8_in_jet_with_approaching_up():
    rgb = render_image(NOMINAL, 0, 64, seed=7)
    assert rgb.shape == (64, 64, 3) and rgb.dtype == np.uint8
    lut = jet_lut()
    index = np.argmin(np.abs(rgb[..., None, :].astype(int) - lut[None, None].astype(int)).sum(-1), axis=-1)
    np.testing.assert_array_equal(lut[index], rgb)  # every pixel is a jet colour
    assert lut[0].tolist() == [0, 0, 128] and lut[-1].tolist() == [128, 0, 0]  # floor dark blue, peak dark red
    level = index.mean(axis=1)  # (64,) mean colormap level per row, row 0 = +6 m/s
    # The walker approaches: the signature fills the upper half; fast negative velocities are floor.
    assert level[:32].mean() > 2 * level[40:].mean()
    assert np.argmax(level) in range(20, 32)  # torso band at +1.3 m/s, just above the centre row
    assert index.max() >= 200 and index.min() <= 10  # red torso peak, dark-blue floor


def test_users_differ_and_fingerprints_are_fixed():
    users = [draw_user(u, seed=42) for u in range(1, 32)]
    assert draw_user(5, seed=42) == users[4]
    assert draw_user(5, seed=43) != users[4]
    for field in ("height_m", "speed_mps"):
        values = [getattr(u, field) for u in users]
        assert len(set(values)) == 31
    assert len({u.style for u in users}) == 31 and len({u.rcs_gains for u in users}) == 31
    assert all(1.55 <= u.height_m <= 1.95 and 1.0 <= u.speed_mps <= 1.6 for u in users)
    assert all(0.6 <= u.style.arm_gain <= 1.35 and -5 <= u.style.elbow_offset_deg <= 15 for u in users)
    assert all(0.7 <= g <= 1.3 for u in users for g in u.rcs_gains)
    # Two images of one user share the fingerprint but not the jitter.
    a = simulate_spectrogram(users[0], image_rng(42, 1, 0))
    b = simulate_spectrogram(users[0], image_rng(42, 1, 1))
    assert a.jitter != b.jitter
    assert not np.array_equal(a.spectrogram.power_db, b.spectrogram.power_db)
    with pytest.raises(ValueError, match="user_id"):
        draw_user(0)


def test_same_seed_gives_identical_pngs_and_other_seed_differs(tmp_path):
    a = generate_microdoppler_dataset(tmp_path / "a", 2, 2, 32, seed=3, progress=False)
    b = generate_microdoppler_dataset(tmp_path / "b", 2, 2, 32, seed=3, progress=False)
    c = generate_microdoppler_dataset(tmp_path / "c", 2, 2, 32, seed=4, progress=False)
    assert _files(a) == _files(b)
    assert all(x != y for x, y in zip(_files(a).values(), _files(c).values(), strict=True))


def test_images_are_stable_when_the_dataset_grows(tmp_path):
    small = _files(generate_microdoppler_dataset(tmp_path / "s", 2, 2, 32, progress=False))
    large = _files(generate_microdoppler_dataset(tmp_path / "l", 3, 3, 32, progress=False))
    assert len(large) == 9
    assert {k: large[k] for k in small} == small


def test_workers_give_the_same_bytes(tmp_path):
    serial = generate_microdoppler_dataset(tmp_path / "w1", 2, 3, 32, progress=False)
    parallel = generate_microdoppler_dataset(tmp_path / "w2", 2, 3, 32, progress=False, workers=2)
    assert _files(serial) == _files(parallel)


def test_folder_layout_png_sizes_and_manifest(tmp_path):
    out = generate_microdoppler_dataset(tmp_path / "ds", 3, 2, 48, seed=11, progress=False)
    assert out == tmp_path / "ds"
    assert sorted(p.name for p in out.iterdir()) == ["ID_1", "ID_2", "ID_3", "synthetic.json"]
    for user in ("ID_1", "ID_2", "ID_3"):
        assert sorted(p.name for p in (out / user).iterdir()) == ["img_0000.png", "img_0001.png"]
        for png in (out / user).iterdir():
            with Image.open(png) as im:
                assert im.format == "PNG" and im.mode == "RGB" and im.size == (48, 48)
    manifest = json.loads((out / "synthetic.json").read_text())
    assert manifest["complete"] is True
    assert manifest["parameters"]["num_users"] == 3 and manifest["parameters"]["image_size"] == 48
    assert manifest["users"][1] == json.loads(json.dumps(dataclasses.asdict(draw_user(2, seed=11))))


def test_rerun_is_idempotent_and_resumes(tmp_path):
    out = generate_microdoppler_dataset(tmp_path / "ds", 2, 2, 32, progress=False)
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    original = _files(out)
    time.sleep(0.01)
    generate_microdoppler_dataset(out, 2, 2, 32, progress=False)
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before  # nothing rewritten
    (out / "ID_2" / "img_0001.png").unlink()
    generate_microdoppler_dataset(out, 2, 2, 32, progress=False)
    assert _files(out) == original  # the missing image comes back byte-identical


def test_refuses_foreign_or_different_folders(tmp_path):
    out = generate_microdoppler_dataset(tmp_path / "ds", 1, 1, 32, progress=False)
    with pytest.raises(ValueError, match="images_per_user"):
        generate_microdoppler_dataset(out, 1, 2, 32, progress=False)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not empty"):
        generate_microdoppler_dataset(tmp_path / "other", 1, 1, 32, progress=False)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"num_users": 0}, "num_users"),
        ({"images_per_user": 0}, "images_per_user"),
        ({"image_size": 15}, "image_size"),
        ({"seed": -1}, "seed"),
        ({"workers": 0}, "workers"),
    ],
)
def test_bad_numbers_are_rejected_before_writing(tmp_path, kwargs, name):
    with pytest.raises(ValueError, match=rf"^{name} must be an integer >= \d+, got "):
        generate_microdoppler_dataset(tmp_path / "ds", **{"progress": False, **kwargs})
    assert not (tmp_path / "ds").exists()
