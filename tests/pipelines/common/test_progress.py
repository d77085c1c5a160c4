import io

from maskdex.pipelines.common.progress import Progress


def test_progress_lines_count_rate_and_time_left():
    stream = io.StringIO()
    progress = Progress("index", 200, every_s=0.0, stream=stream)
    progress.advance(50)
    line = stream.getvalue().splitlines()[-1]
    assert line.startswith("index: 50/200 images (25%), ") and "images/s" in line and "left" in line


def test_progress_without_a_total_and_between_reports():
    stream = io.StringIO()
    progress = Progress("index", None, unit="rows", every_s=3600.0, stream=stream)
    progress.advance(7)
    assert stream.getvalue() == ""  # not yet time for a line
    progress.every_s = 0.0
    progress.advance(1)
    assert stream.getvalue().startswith("index: 8 rows, ") and "left" not in stream.getvalue()
