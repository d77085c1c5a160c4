import io

from maskdex.pipelines.common.progress import Progress


def test_start_up_is_reported_apart_and_the_rate_counts_from_the_first_result():
    stream = io.StringIO()
    progress = Progress("index", 200, every_s=0.0, stream=stream)
    assert progress.startup_seconds is None, "no result yet: no start-up to report"
    progress.advance(50)
    first = stream.getvalue().splitlines()[-1]
    assert first.startswith("index: started in ") and first.endswith("; 50/200 images (25%)")
    assert "images/s" not in first and "left" not in first  # nothing measured yet
    startup = progress.startup_seconds
    assert startup is not None, "the first result ends the start-up"
    progress.advance(50)
    line = stream.getvalue().splitlines()[-1]
    assert line.startswith("index: 100/200 images (50%), ") and "images/s" in line and "left" in line
    assert progress.startup_seconds == startup, "later results do not move the start-up"


def test_progress_without_a_total_and_between_reports():
    stream = io.StringIO()
    progress = Progress("index", None, unit="rows", every_s=3600.0, stream=stream)
    progress.advance(7)
    assert len(stream.getvalue().splitlines()) == 1  # the start-up line
    progress.advance(1)
    assert len(stream.getvalue().splitlines()) == 1  # not yet time for a line
    progress.every_s = 0.0
    progress.advance(1)
    last = stream.getvalue().splitlines()[-1]
    assert last.startswith("index: 9 rows, ") and "left" not in last
