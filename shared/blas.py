"""One BLAS thread around a numpy call that must not hang (see :func:`one_blas_thread`)."""

from __future__ import annotations

import functools


def one_blas_thread(function):
    """Run ``function`` with OpenBLAS/MKL limited to one thread. Why: called from the
    ServerApp's thread inside a simulation (and from Ray workers), OpenBLAS' own thread pool
    hung in ``exec_blas`` for minutes during an SVD; single-threaded LAPACK does not."""

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        from threadpoolctl import threadpool_limits

        with threadpool_limits(limits=1, user_api="blas"):
            return function(*args, **kwargs)

    return wrapper
