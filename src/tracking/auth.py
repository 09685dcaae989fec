"""Credentials for an MLflow server started with MLflow's basic-auth app (slurm/mlflow_server.sh).

MLflow's client authenticates with $MLFLOW_TRACKING_USERNAME / $MLFLOW_TRACKING_PASSWORD. When they are not
set, the owner's credentials file (written by the server script, mode 0600) provides them: `load()` exports
them into os.environ for this process and its children, never onto a command line. Imports MLflow only for
its REST calls and never Keras: the server script calls it too (`python -m src.tracking.auth path|ini`).
"""

from __future__ import annotations

import logging
import os
import secrets
import stat
import sys
import urllib.parse
from pathlib import Path

from ..errors import UserError

log = logging.getLogger(__name__)

USER_VAR = "MLFLOW_TRACKING_USERNAME"
PASSWORD_VAR = "MLFLOW_TRACKING_PASSWORD"


class AuthError(UserError):
    """Credentials cannot be used; the message names the fix."""


def credentials_path(environ=os.environ) -> Path:
    """${LE5_MLFLOW_CREDENTIALS:-${XDG_CONFIG_HOME:-~/.config}/le5/mlflow-credentials}."""
    if environ.get("LE5_MLFLOW_CREDENTIALS"):
        return Path(environ["LE5_MLFLOW_CREDENTIALS"])
    config = environ.get("XDG_CONFIG_HOME") or str(Path(environ.get("HOME") or Path.home()) / ".config")
    return Path(config) / "le5" / "mlflow-credentials"


def _check_mode(path: Path) -> None:
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise AuthError(
            f"{path} holds the MLflow server's password but others can read it (mode {mode:04o}).\n"
            f"Fix: chmod 600 {path}"
        )


def read_file(path: Path) -> tuple[str, str] | None:
    """(username, password) from `path` (lines `username=...`, `password=...`), None when it does not exist."""
    if not path.exists():
        return None
    _check_mode(path)
    values = {}
    for line in path.read_text().splitlines():
        key, sep, value = line.partition("=")
        if sep:
            values[key.strip()] = value.strip()
    user, password = values.get("username", ""), values.get("password", "")
    if not user or not password:
        raise AuthError(f"{path} lacks a username= or a non-empty password= line.\nFix: {fix_text(path)}")
    return user, password


def credentials(environ=os.environ) -> tuple[str, str] | None:
    """The variables when set, else the file's, else None. An empty password is refused."""
    user, password = environ.get(USER_VAR), environ.get(PASSWORD_VAR)
    if user is not None or password is not None:
        if not user or not password:
            raise AuthError(f"{USER_VAR} and {PASSWORD_VAR} must both be set and non-empty.\n"
                            f"Fix: {fix_text(credentials_path(environ))}")
        return user, password
    return read_file(credentials_path(environ))


def load(environ=os.environ) -> tuple[str, str] | None:
    """Export the credentials into `environ` for MLflow's client (and child processes) when only the file has them."""
    found = credentials(environ)
    if found is not None:
        environ[USER_VAR], environ[PASSWORD_VAR] = found
    return found


def fix_text(path: Path) -> str:
    return (f"export {USER_VAR}=<user> and {PASSWORD_VAR}=<password> (the server owner's are in {path}, "
            "written by slurm/mlflow_server.sh; a labmate gets an account from the owner), or keep them in that "
            "file (lines username=..., password=..., chmod 600).")


def refusal(uri: str, status: int, experiment: str | None = None, environ=os.environ) -> str:
    """The one screen for a 401 (missing or wrong credentials) or a 403 (no permission on `experiment`)."""
    path = credentials_path(environ)
    user = environ.get(USER_VAR)
    if status == 401:
        who = f"as {user!r} " if user else "without credentials "
        return f"the MLflow server at {uri} refused the request {who}(401: authentication required).\nFix: {fix_text(path)}"
    return (f"user {user!r} has no permission to write to experiment {experiment!r} on the MLflow server at {uri} "
            f"(403).\nFix: ask the server's owner to grant it (README, cluster section: "
            f"permissions), or use another tracking.experiment_name.")


def _request(uri: str, path: str, user_password: tuple[str, str] | None, body: dict | None = None) -> tuple[int, dict]:
    """(HTTP status, JSON body) of one REST call, with Basic auth when credentials are given. A user:password@ in
    the URI is not part of the host. Sent by MLflow's own client (rest_utils.http_request), so a busy server gets
    the patience a run's own calls get: MLFLOW_HTTP_REQUEST_TIMEOUT and _MAX_RETRIES (store.HTTP_DEFAULTS)."""
    from mlflow.exceptions import MlflowException  # imported here: the server script's commands need no MLflow
    from mlflow.utils.rest_utils import MlflowHostCreds, http_request

    parts = urllib.parse.urlsplit(uri.rstrip("/"))
    base = urllib.parse.urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))
    user, password = user_password or (None, None)
    path, _, query = path.partition("?")
    try:
        response = http_request(MlflowHostCreds(base, username=user, password=password), path,
                                "GET" if body is None else "POST", json=body,
                                params=dict(urllib.parse.parse_qsl(query)), raise_on_status=False)
    except MlflowException as err:
        raise UserError(
            f"the MLflow server at {base} did not answer the credentials check: {str(err).splitlines()[0]}\n"
            "Fix: check that the server runs and is not overloaded (its terminal shows its log), or raise "
            "MLFLOW_HTTP_REQUEST_TIMEOUT / MLFLOW_HTTP_REQUEST_MAX_RETRIES."
        ) from err
    try:
        return response.status_code, response.json() if response.ok else {}
    except ValueError:  # not JSON: a proxy's page, say
        return response.status_code, {}


def _status(uri: str, user_password: tuple[str, str] | None) -> int:
    """The HTTP status of a harmless read (experiments/get-by-name), with or without Basic auth."""
    return _request(uri, "/api/2.0/mlflow/experiments/get-by-name?experiment_name=Default", user_password)[0]


def requires_auth(uri: str) -> bool:
    return _status(uri, None) == 401


def check_server(uri: str, environ=os.environ) -> tuple[str, str] | None:
    """Before a run opens on a server: load the credentials; refuse missing or wrong ones where the server
    requires them; warn (one line) where credentials are set but the server has no authentication.
    Returns the credentials in use, None where the server requires none."""
    found = load(environ)
    if not requires_auth(uri):
        if found is not None:
            log.warning("credentials are set (%s) but the MLflow server at %s has no authentication; going on.",
                        USER_VAR, uri)
        return None
    if found is None or _status(uri, found) == 401:
        raise AuthError(refusal(uri, 401, environ=environ))
    return found


def access(uri: str, experiment: str, found: tuple[str, str]) -> str:
    """This user's access to `experiment`: "write", "read", "none" or "new" (it does not exist; any user may create
    it). Writing is probed with an experiments/update that names no new name: the server checks the permission
    first (403 without EDIT or MANAGE), then refuses the request as incomplete (400), so nothing changes."""
    code, body = _request(uri, "/api/2.0/mlflow/experiments/get-by-name?"
                          + urllib.parse.urlencode({"experiment_name": experiment}), found)
    if code == 404:
        return "new"
    if code == 403:
        return "none"
    return "write" if can_write(uri, body.get("experiment", {}).get("experiment_id", ""), found) else "read"


def can_write(uri: str, experiment_id: str, found: tuple[str, str]) -> bool:
    """Whether this user may write to an experiment it can open (the probe of `access`)."""
    return _request(uri, "/api/2.0/mlflow/experiments/update", found, {"experiment_id": experiment_id})[0] != 403


def describe(uri: str, experiment: str, environ=os.environ) -> tuple[bool, str]:
    """For src.doctor: (usable, a line) on whether the server requires authentication and whether this shell can
    write to `experiment`."""
    try:
        found = load(environ)
    except AuthError as err:
        return False, str(err).replace("\n", " ")
    if not requires_auth(uri):
        extra = f" ({USER_VAR} is set but unused)" if found else ""
        return True, f"authentication: the server at {uri} requires none: anyone who can reach it can write{extra}"
    if found is None or _status(uri, found) == 401:
        return False, "authentication: " + refusal(uri, 401, environ=environ).replace("\n", " ")
    state = access(uri, experiment, found)
    if state in ("none", "read"):
        return False, "authentication: " + refusal(uri, 403, experiment, environ).replace("\n", " ") + (
            " (this user can read it)" if state == "read" else "")
    what = "it does not exist yet: this user's first run creates it" if state == "new" else "this user can write to it"
    return True, f"authentication: required; this shell authenticates as {found[0]!r}; experiment {experiment!r}: {what}"


def ensure(path: Path, environ=os.environ) -> tuple[str, str]:
    """The owner's credentials for the server script: the variables, else the file, else a new file (0600)."""
    found = credentials(environ)
    if found is not None:
        return found
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    user = environ.get("USER") or "owner"
    password = secrets.token_urlsafe(24)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(f"username={user}\npassword={password}\n")
    return user, password


def main(argv: list[str]) -> int:
    """`path`: print the credentials file's path. `ini FILE DB`: write MLflow's auth config (0600) for the owner."""
    try:
        if argv[:1] == ["path"]:
            print(credentials_path())
            return 0
        if argv[:1] == ["ini"] and len(argv) == 3:
            user, password = ensure(credentials_path())
            ini = Path(argv[1])
            fd = os.open(ini, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write("[mlflow]\ndefault_permission = NO_PERMISSIONS\n"
                        f"database_uri = {argv[2]}\nadmin_username = {user}\nadmin_password = {password}\n"
                        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n")
            print(user)
            return 0
    except AuthError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print("usage: python -m src.tracking.auth path | ini FILE DATABASE_URI", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
