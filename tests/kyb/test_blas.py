"""kyb.blas.one_blas_thread: a process-wide BLAS limit that concurrent searches can share."""

from __future__ import annotations

import threading

from threadpoolctl import threadpool_info

from kyb.blas import one_blas_thread


def _blas_threads() -> set[int]:
    return {pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"}


def test_the_limit_holds_until_the_last_thread_leaves_and_then_restores_the_original() -> None:
    """Two threads inside at once (and one nested): the first to leave must not lift the limit from
    the other, and the original thread count comes back once, after the last leaves (a plain
    threadpoolctl limit per caller restored it early, or restored "1" for good)."""
    original = _blas_threads()
    assert original, "numpy's BLAS was not found"
    first_in, second_in, first_out = threading.Event(), threading.Event(), threading.Event()
    seen: dict[str, set[int]] = {}

    def first() -> None:
        with one_blas_thread():
            first_in.set()
            second_in.wait(5)
        first_out.set()

    def second() -> None:
        first_in.wait(5)
        with one_blas_thread():
            with one_blas_thread():  # nested
                second_in.set()
                first_out.wait(5)
                seen["after the first left"] = _blas_threads()
            seen["nested exit"] = _blas_threads()

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert seen == {"after the first left": {1}, "nested exit": {1}}
    assert _blas_threads() == original


def test_an_error_inside_still_restores_the_original() -> None:
    original = _blas_threads()
    try:
        with one_blas_thread():
            assert _blas_threads() == {1}
            raise RuntimeError("search failed")
    except RuntimeError:
        pass
    assert _blas_threads() == original


def test_the_original_comes_back_when_the_last_to_leave_is_not_the_thread_that_lowered_it() -> None:
    """The main thread enters first and leaves first, a worker leaves last while the main thread
    lives on, as a server's request threads do: OpenBLAS ignored a raise made from any thread but
    the one that had lowered the limit, so this restored "1" for good every time."""
    original = _blas_threads()
    worker_in, main_out = threading.Event(), threading.Event()
    seen: dict[str, set[int]] = {}

    def worker() -> None:
        with one_blas_thread():
            worker_in.set()
            main_out.wait(5)
            seen["inside"] = _blas_threads()

    thread = threading.Thread(target=worker)
    with one_blas_thread():
        thread.start()
        assert worker_in.wait(5)
    main_out.set()
    thread.join(10)
    assert seen == {"inside": {1}}
    assert _blas_threads() == original
