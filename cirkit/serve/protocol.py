"""The `cirkit serve` protocol: what the client and the server share.

JSON over HTTP/1.0, on 127.0.0.1 by default:

    GET  /health  -> {"service": "cirkit", "protocol", "version", "pid", "ready"}; with a valid token
                     also "busy", "queries", "model_loads", "models"
    POST /query   <- a QueryRequest (Content-Type: application/json, TOKEN_HEADER, PROTOCOL_HEADER)
                  -> newline-delimited JSON, streamed: {"run": ID} as each run is started, then one
                     final {"runs": [...]} (as query_many returns them) or {"error": "one line"}

Every request but /health must carry the server's token, a random secret that `cirkit serve` writes
to a file only its user can read (token_path). A request that carries an Origin header (a web page)
or names another host than the one the server listens on (DNS rebinding) is refused (403), as is
one without the right token (401). Every path in a request is absolute: the server works in no
client's directory.
"""

from __future__ import annotations

import os
import secrets
import sys
from pathlib import Path
from typing import Any, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from cirkit.errors import CirkitError, one_line

PROTOCOL = 2
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8477
PORT_ENV = "CIRKIT_PORT"
SERVER_ENV = "CIRKIT_SERVER"
TOKEN_DIR_ENV = "CIRKIT_TOKEN_DIR"
TOKEN_HEADER = "X-Cirkit-Token"
PROTOCOL_HEADER = "X-Cirkit-Protocol"
JSON_TYPE = "application/json"
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "[::1]")


# ---------------------------------------------------------------- the request


def _absolute(value: str) -> str:
    if not os.path.isabs(value):
        raise ValueError(f"'{value}' is not an absolute path")
    return value


class QueryItem(BaseModel):
    model_config = ConfigDict(extra="forbid")

    image: str
    text: str
    id: Optional[str] = None
    targets: Optional[list[str]] = None

    @field_validator("image")
    @classmethod
    def _image(cls, value: str) -> str:
        return _absolute(value)


class QueryRequest(BaseModel):
    """One query, or one batch: what `cirkit query` would run locally, with absolute paths."""

    model_config = ConfigDict(extra="forbid")

    data_dir: str
    index: str
    pipeline: str  # a built-in pipeline's name, or an absolute path
    prompts: dict[str, list[str]] = Field(default_factory=dict)  # step -> template names or absolute paths
    models: dict[str, dict[str, Any]] = Field(default_factory=dict)  # `--model NAME=SPEC` replacements
    k: int = Field(ge=1)
    use_cache: bool = True
    raise_on_failure: bool = False
    exclude_reference: Optional[bool] = None  # None: only for a reference inside the indexed folder
    queries: Optional[list[QueryItem]] = None
    queries_file: Optional[str] = None

    @field_validator("data_dir", "index", "queries_file")
    @classmethod
    def _paths(cls, value: Optional[str]) -> Optional[str]:
        return value if value is None else _absolute(value)

    @field_validator("pipeline")
    @classmethod
    def _pipeline(cls, value: str) -> str:
        if not os.path.isabs(value) and not _is_name(value):
            raise ValueError(f"'{value}' is neither a built-in pipeline name nor an absolute path")
        return value

    @field_validator("prompts")
    @classmethod
    def _prompts(cls, value: dict[str, list[str]]) -> dict[str, list[str]]:
        for refs in value.values():
            for ref in refs:
                if not os.path.isabs(ref) and not _is_name(ref) and not _is_imported_name(ref):
                    raise ValueError(f"'{ref}' is neither a template name nor an absolute path")
        return value

    @model_validator(mode="after")
    def _one_source(self) -> "QueryRequest":
        if (self.queries is None) == (self.queries_file is None):
            raise ValueError("give either 'queries' or 'queries_file'")
        if self.queries is not None and not self.queries:
            raise ValueError("'queries' is empty")
        return self


def parse_request(body: bytes) -> QueryRequest:
    """The request in `body`, or a CirkitError that says in one line what is wrong with it."""
    try:
        return QueryRequest.model_validate_json(body)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(part) for part in err["loc"])
        message = err["msg"].removeprefix("Value error, ")
        raise CirkitError(f"{where}: {message}" if where else message) from None


def _is_name(value: str) -> bool:
    return bool(value) and not value.startswith((".", "~")) and "/" not in value and "\\" not in value \
        and not value.endswith((".yaml", ".yml"))


def _is_imported_name(value: str) -> bool:
    """An imported template's name, NAME/CONSTANT (`cirkit prompts import`)."""
    group, sep, constant = value.partition("/")
    return bool(sep) and _is_name(group) and _is_name(constant)


# ---------------------------------------------------------------- building a request (client side)


class PathNames:
    """The absolute paths a request carries, and how the user typed them: error messages from the
    server name paths as the user gave them."""

    def __init__(self, cwd: Path):
        self.cwd = cwd
        self._typed: dict[str, str] = {}

    def absolute(self, typed: str | Path) -> str:
        given = Path(typed).expanduser()
        full = str(self.cwd / given)
        if not given.is_absolute():
            self._typed[full] = str(Path(typed))
        return full

    def alias(self, full: str, typed: str) -> None:
        self._typed[full] = typed

    def local(self, message: str) -> str:
        for full in sorted(self._typed, key=len, reverse=True):
            message = message.replace(full, self._typed[full])
        return message


def build_request(
    *, data_dir: str | Path, index: str | Path, pipeline: str | Path, prompts: dict[str, list[str]], k: int,
    use_cache: bool, raise_on_failure: bool, queries_file: str | Path | None = None,
    image: str | Path | None = None, text: str | None = None, models: dict[str, dict[str, Any]] | None = None,
    exclude_reference: bool | None = None,
) -> tuple[QueryRequest, PathNames]:
    """The request for what `cirkit query` would run in this directory, and the names to map the
    server's messages back to the paths as typed."""
    names = PathNames(Path.cwd())
    pipeline_ref = str(pipeline)
    pipeline_file = _pipeline_file(pipeline_ref, names.cwd)
    if pipeline_file is not None:
        pipeline_ref = names.absolute(pipeline_ref)
    swaps = {step: [_prompt_ref(ref, names, pipeline_file) for ref in refs] for step, refs in prompts.items()}
    fields = dict(data_dir=names.absolute(data_dir), index=names.absolute(index), pipeline=pipeline_ref, prompts=swaps,
                  models=models or {}, k=k, use_cache=use_cache, raise_on_failure=raise_on_failure,
                  exclude_reference=exclude_reference)
    if queries_file is not None:
        fields["queries_file"] = names.absolute(queries_file)
        typed_dir, full_dir = Path(queries_file).parent, Path(fields["queries_file"]).parent
        if not Path(queries_file).expanduser().is_absolute():  # image paths in the file are read relative to it
            names.alias(f"{full_dir}{os.sep}", "" if str(typed_dir) == "." else f"{typed_dir}{os.sep}")
    else:
        fields["queries"] = [QueryItem(image=names.absolute(image), text=text)]
    try:
        return QueryRequest(**fields), names
    except ValidationError as exc:
        raise CirkitError(f"cannot send this query to the cirkit server: {one_line(exc.errors()[0]['msg'])}") from None


def _pipeline_file(ref: str, cwd: Path) -> Path | None:
    """The pipeline file `ref` names from `cwd`, or None for a built-in pipeline's name (as load_pipeline decides)."""
    if not _is_name(ref):
        return cwd / Path(ref).expanduser()
    builtin = Path(__file__).resolve().parents[1] / "pipelines" / "builtin" / f"{ref}.yaml"
    if not builtin.is_file() and (cwd / ref).is_file():
        return cwd / ref
    return None


def _prompt_ref(ref: str, names: PathNames, pipeline_file: Path | None) -> str:
    """A --prompt template as load_prompt finds it: a name, else a path from here, else from the pipeline's folder."""
    path = Path(ref).expanduser()
    if path.suffix not in {".yaml", ".yml"} and "/" not in ref and "\\" not in ref:
        return ref
    if path.is_absolute():
        return str(path)
    if not (names.cwd / path).exists() and _is_imported_name(ref):
        return ref
    if not (names.cwd / path).exists() and pipeline_file is not None:
        full = str(pipeline_file.parent / path)
        names.alias(full, ref)
        return full
    return names.absolute(ref)


# ---------------------------------------------------------------- addresses


def default_port() -> int:
    """$CIRKIT_PORT, else DEFAULT_PORT."""
    value = os.environ.get(PORT_ENV, "").strip()
    if not value:
        return DEFAULT_PORT
    if not value.isdigit() or not 0 < int(value) < 65536:
        raise CirkitError(f"${PORT_ENV} must be a port number (1-65535), got '{value}'")
    return int(value)


def default_data_dir() -> Path:
    """The run store a command uses without --data-dir (as cirkit.store has it, without importing numpy)."""
    from platformdirs import user_data_dir

    return Path(os.environ.get("CIRKIT_DATA_DIR") or user_data_dir("cirkit", appauthor=False))


def allowed_hosts(host: str, port: int) -> set[str]:
    """The Host headers a server listening on host:port answers to."""
    named = f"[{host}]" if ":" in host else host
    return {f"{name}:{port}".lower() for name in (*LOOPBACK_NAMES, named)}


# ---------------------------------------------------------------- the token


def token_dir() -> Path:
    """Where servers keep their tokens: $CIRKIT_TOKEN_DIR, else the user's runtime directory
    ($XDG_RUNTIME_DIR/cirkit on Linux), else the user's state directory."""
    import platformdirs

    if os.environ.get(TOKEN_DIR_ENV):
        return Path(os.environ[TOKEN_DIR_ENV]).expanduser()
    if sys.platform.startswith("linux") and not os.environ.get("XDG_RUNTIME_DIR"):
        return Path(platformdirs.user_state_dir("cirkit", appauthor=False)) / "serve"
    return Path(platformdirs.user_runtime_dir("cirkit", appauthor=False))


def token_path(port: int) -> Path:
    return token_dir() / f"serve-{port}.token"


def write_token(port: int) -> tuple[Path, str]:
    """A new random token for the server on `port`, in a file only this user can read."""
    directory = token_dir()
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        _check_private(directory, fix=True)
        token = secrets.token_urlsafe(32)
        path = directory / f"serve-{port}.token"
        scratch = directory / f".serve-{port}.{os.getpid()}.{secrets.token_hex(4)}"
        fd = os.open(scratch, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
        with os.fdopen(fd, "w", encoding="ascii") as out:
            out.write(token + "\n")
        os.replace(scratch, path)
    except OSError as exc:
        raise CirkitError(f"cannot write the server's token file in {directory}: {one_line(exc.strerror or exc)} "
                          f"(set ${TOKEN_DIR_ENV} to a private directory)") from None
    return path, token


def read_token(port: int) -> str:
    """The token of this user's server on `port`; a CirkitError (one line, naming the file) when it
    cannot be read or is not private."""
    path = token_path(port)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except FileNotFoundError:
        raise CirkitError(f"its token file {path} does not exist (a server started by another user, or with another "
                          f"${TOKEN_DIR_ENV}?)") from None
    except OSError as exc:
        raise CirkitError(f"its token file {path} cannot be read: {one_line(exc.strerror or exc)}") from None
    with os.fdopen(fd, encoding="ascii", errors="replace") as handle:
        _check_private(path, stat=os.fstat(handle.fileno()))
        token = handle.read(1024).strip()
    if not token:
        raise CirkitError(f"its token file {path} is empty")
    return token


def remove_token(path: Path, token: str) -> None:
    """Remove the token file, unless another server has written its own there since."""
    try:
        if path.read_text(encoding="ascii").strip() == token:
            path.unlink()
    except OSError:
        pass


def _check_private(path: Path, *, fix: bool = False, stat: os.stat_result | None = None) -> None:
    if not hasattr(os, "getuid"):
        return
    stat = stat or os.stat(path)
    if stat.st_uid != os.getuid():
        raise CirkitError(f"{path} belongs to another user: set ${TOKEN_DIR_ENV} to a private directory")
    if stat.st_mode & 0o077:
        if not fix:
            raise CirkitError(f"{path} can be read by other users (mode {stat.st_mode & 0o777:o}): it must be 0600")
        os.chmod(path, 0o700)
