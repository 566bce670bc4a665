"""The report's log axes carry plain, non-overlapping tick labels."""

from gpo.experiments.report.figures import _readable_log_ticks
from gpo.io import pyplot

plt = pyplot()


def _x_labels(lo: float, hi: float) -> set[str]:
    """The x tick labels of a log axis spanning ``lo`` to ``hi``, as drawn."""
    fig, ax = plt.subplots()
    ax.plot([lo, hi], [1, 2])
    ax.set_xscale("log")
    _readable_log_ticks(ax)
    fig.canvas.draw()
    ticks = ax.xaxis.get_majorticklabels() + ax.xaxis.get_minorticklabels()
    plt.close(fig)
    return {t.get_text() for t in ticks if t.get_text()}


def test_a_short_log_axis_gets_1_2_5_labels_in_plain_numbers():
    labels = _x_labels(0.3, 6.0)
    assert {"0.5", "1", "2", "5"} <= labels
    assert not any("10^" in s or "times" in s for s in labels)  # no scientific notation
    assert "0.3" not in labels and "4" not in labels  # not every minor tick


def test_a_long_log_axis_labels_only_decades():
    labels = _x_labels(0.01, 1000.0)
    assert {"0.01", "1", "1000"} <= labels
    assert "2" not in labels and "5" not in labels
