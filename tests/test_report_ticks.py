"""The report's log axes carry plain, non-overlapping tick labels."""

from gpo.experiments.report.figures import _readable_log_ticks
from gpo.io import pyplot

plt = pyplot()


def _labels(axis) -> list[str]:
    major = [t.get_text() for t in axis.get_majorticklabels()]
    minor = [t.get_text() for t in axis.get_minorticklabels()]
    return [s for s in major + minor if s]


def test_a_short_log_axis_gets_1_2_5_labels_in_plain_numbers():
    fig, ax = plt.subplots()
    ax.plot([0.3, 6.0], [1, 2])
    ax.set_xscale("log")
    _readable_log_ticks(ax)
    fig.canvas.draw()
    labels = _labels(ax.xaxis)
    plt.close(fig)
    assert {"0.5", "1", "2", "5"} <= set(labels)
    assert not any("10^" in s or "times" in s for s in labels)  # no scientific notation
    assert "0.3" not in labels and "4" not in labels  # not every minor tick


def test_a_long_log_axis_labels_only_decades():
    fig, ax = plt.subplots()
    ax.plot([0.01, 1000.0], [1, 2])
    ax.set_xscale("log")
    _readable_log_ticks(ax)
    fig.canvas.draw()
    labels = _labels(ax.xaxis)
    plt.close(fig)
    assert {"0.01", "1", "1000"} <= set(labels)
    assert "2" not in labels and "5" not in labels
