import io

from maskdex.pipelines.common.progress import Progress


class _Clock:
    """The times at which the test says things happen, in seconds."""

    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_start_up_is_reported_apart_and_the_rate_counts_from_the_first_result():
    stream, clock = io.StringIO(), _Clock()
    progress = Progress("index", 200, every_s=0.0, stream=stream, clock=clock)
    started_at = clock.now
    assert stream.getvalue() == ""  # no result yet: nothing to report
    clock.now = first_result_at = 40.0
    progress.advance(50)
    assert stream.getvalue().splitlines()[-1] == "index: started in 40s (Ray, workers, models); 50/200 images (25%)"
    clock.now = 50.0  # 50 more in the 10 s after the first result: 5 images/s, 100 left
    progress.advance(50)
    assert stream.getvalue().splitlines()[-1] == "index: 100/200 images (50%), 5.00 images/s, about 20s left"
    # What the job's summary reports as start-up: until the first result, whatever came after it.
    assert progress.startup_seconds == first_result_at - started_at


def test_progress_without_a_total_and_between_reports():
    stream, clock = io.StringIO(), _Clock()
    progress = Progress("index", None, unit="rows", every_s=30.0, stream=stream, clock=clock)
    progress.advance(7)
    assert len(stream.getvalue().splitlines()) == 1  # the start-up line
    clock.now = 29.0
    progress.advance(1)
    assert len(stream.getvalue().splitlines()) == 1  # not yet time for a line
    clock.now = 30.0
    progress.advance(1)
    assert stream.getvalue().splitlines()[-1] == "index: 9 rows, 0.07 rows/s"  # 2 rows in 30 s; no total, no time left
