"""The job secret lives in ``bus`` (server and runners share it); re-exported here."""

from bus import job_secret_path as job_secret_path
from bus import load_or_create_job_secret as load_or_create_job_secret

__all__ = ["job_secret_path", "load_or_create_job_secret"]
