"""An Optuna RDB storage that waits for its database: a PostgreSQL restart or failover mid-sweep.

Tune calls the Optuna searcher in its own loop. A lost connection there used to end the sweep (a
report: `StorageInternalError`, every trial stopped) or, worse, was swallowed (`OptunaSearch` logs a
failed `tell` and goes on, leaving the trial RUNNING in the study for good). `PatientRDBStorage`
retries each storage call while the database does not answer (`study.lost_connection`), within
`study.storage_retry_seconds()`, and its engine tests pooled connections before use, so the first
call after a restart does not fail on a dead one. Each call is one transaction, so a retry repeats
nothing that was committed, except when the connection drops after the commit itself (then a new
trial may be created twice; the first stays RUNNING).
"""

from __future__ import annotations

import functools
import logging
from typing import Any, Callable

from optuna.storages import RDBStorage

from orchestration.backoff import Outermost, call_with_backoff
from orchestration.study import database_error, lost_connection, storage_retry_seconds

logger = logging.getLogger(__name__)
_outermost = Outermost()


def _patient(method: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(method)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if _outermost.inside:
            return method(*args, **kwargs)
        return call_with_backoff(_outermost.attempt(method, *args, **kwargs), lost_connection,
                                 storage_retry_seconds(), f"Optuna storage {method.__name__}", logger,
                                 reason=database_error)

    return wrapper


class PatientRDBStorage(RDBStorage):
    """`RDBStorage` whose every database call waits out a database that does not answer."""


for _name, _method in vars(RDBStorage).items():
    if not _name.startswith("_") and callable(_method) and _name != "remove_session":
        setattr(PatientRDBStorage, _name, _patient(_method))
