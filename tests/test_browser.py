"""The HTML report opened in headless Chromium (Debian's `chromium`, installed by `make setup`): the page
renders (a non-blank screenshot with the plots' colours in it) and every embedded plot decodes."""

import re
import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image

import bitsmith
from bitsmith import zoo

MODEL = "mtcnn_rnet"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# flags for a closed network and a headless CI box: no sandbox (root in containers), no GPU, no
# background requests (updates, sync, QUIC probes) that would hang without a network
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
MATPLOTLIB_BLUE = np.array([0x1F, 0x77, 0xB4])
WINDOW = (1200, 4000)


@pytest.fixture(scope="module")
def html_report(tmp_path_factory):
    if not shutil.which(CHROMIUM):
        pytest.fail("chromium is not installed: `make setup` installs it (apt-get install chromium)")
    root = tmp_path_factory.mktemp("browser")
    # under a size budget, so the precision search runs and the page has all its plots
    (report,) = bitsmith.bench(zoo.onnx_path(MODEL), "x86-avx2", data=zoo.inputs(MODEL, 8, split="eval"),
                               calibration=zoo.inputs(MODEL, 8, split="calib"),
                               constraints=bitsmith.Constraints(size_mb=0.25),
                               input_shapes=zoo.input_shapes(MODEL), output_dir=root / "artifacts",
                               settings=bitsmith.BenchSettings(repeat=5, warmup=1, profile_runs=1, memory=False,
                                                               quiet=True))
    return report.save(root / "report")["html"]


def chromium(*args, user_data_dir):
    return subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={user_data_dir}", *map(str, args)],
                          capture_output=True, text=True, timeout=120)


def test_screenshot_is_rendered_with_plots(html_report, tmp_path):
    shot = tmp_path / "shot.png"
    proc = chromium(f"--screenshot={shot}", f"--window-size={WINDOW[0]},{WINDOW[1]}", html_report.as_uri(),
                    user_data_dir=tmp_path / "profile")
    assert shot.is_file(), proc.stderr[-2000:]
    pixels = np.asarray(Image.open(shot).convert("RGB")).astype(np.int32)
    assert pixels.shape[:2] == (WINDOW[1], WINDOW[0])
    assert pixels.std() > 20  # not a blank page
    assert (pixels.min(axis=2) < 200).mean() > 0.03  # text, tables and plots cover part of the page
    blue = (np.abs(pixels - MATPLOTLIB_BLUE).max(axis=2) < 12).sum()
    assert blue > 5000  # the plots' bars are drawn (matplotlib's first colour)


def test_every_plot_decodes(html_report, tmp_path):
    probe = tmp_path / "probe.html"
    script = ("<script>window.addEventListener('load', () => document.body.setAttribute('data-plots', "
              "[...document.querySelectorAll('img.plot')].map(i => i.complete ? i.naturalWidth : -1).join(',')));"
              "</script></body>")
    probe.write_text(html_report.read_text().replace("</body>", script))
    proc = chromium("--dump-dom", "--virtual-time-budget=5000", probe.as_uri(), user_data_dir=tmp_path / "profile")
    match = re.search(r'data-plots="([\d,-]*)"', proc.stdout)
    assert match, proc.stderr[-2000:]
    widths = [int(w) for w in match.group(1).split(",")]
    # bits and formats, sensitivity vs bits, latency breakdown, per-layer latency, Pareto front
    assert len(widths) == 5
    assert min(widths) > 200
    assert "not computed" not in proc.stdout.split("<h2>Plots</h2>")[1]


def test_report_page_is_self_contained(html_report):
    text = html_report.read_text()
    assert "src=\"http" not in text and "<link" not in text
    assert text.count("data:image/png;base64,") == 5
