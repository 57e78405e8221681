"""The operator API of undo (docs/undo.md), behind `auth.operator_token` (off, 404, when it is empty).

* `GET /v1/undo`: the pending undos, the soonest TTL first;
* `GET /v1/undo/{id}`: the records of an action id or of an alert id's actions, pending or done;
* `POST /v1/undo/{id}`: undo that action, or every reversible action of that alert (last step first);
  200 with a result per action (`undone`, `already_undone`, `conflict`, `failure`), 404 when nothing has
  that id.

Every request carries `Authorization: Bearer <auth.operator_token>` (401 without it or with another).
"""

from __future__ import annotations

from aiohttp import web

from talon_opa.core import config
from talon_opa.engine.intake import refuse
from talon_opa.engine.operator_auth import operator_refusal
from talon_opa.engine.undo import Undoer, UnknownUndo, pending_doc
from talon_opa.engine.undo_store import valid_id

PATH = "/v1/undo"


def add_routes(app: web.Application, cfg: config.Config, undoer: Undoer) -> None:
    """The undo routes; add them before the `/v1/` catch-all."""

    def checked_id(request: web.Request) -> tuple[str, web.Response | None]:
        refusal = operator_refusal(cfg.auth.operator_token, request)
        id_ = request.match_info.get("id", "")
        if refusal is None and not valid_id(id_):
            refusal = refuse(400, f"{id_[:100]!r} is not an alert id or an action id", "id")
        return id_, refusal

    async def pending(request: web.Request) -> web.Response:
        refusal = operator_refusal(cfg.auth.operator_token, request)
        if refusal is not None:
            return refusal
        return web.json_response({"pending": [pending_doc(r) for r in undoer.pending()]})

    async def show(request: web.Request) -> web.Response:
        id_, refusal = checked_id(request)
        if refusal is not None:
            return refusal
        records = undoer.records(id_)
        if not records:
            return refuse(404, f"no reversible action has the id {id_!r}", "id")
        return web.json_response({"id": id_, "actions": [pending_doc(r) for r in records]})

    async def undo(request: web.Request) -> web.Response:
        id_, refusal = checked_id(request)
        if refusal is not None:
            return refusal
        try:
            reports = await undoer.undo(id_)
        except UnknownUndo as e:
            return refuse(404, str(e), "id", hint=e.hint)
        except OSError as e:  # the undo ran, but its record could not be written (state_dir)
            return refuse(500, f"the undo's record could not be written: {e}", "state_dir", hint="check state_dir")
        return web.json_response({"id": id_, "results": [r.doc() for r in reports]})

    app.router.add_route("GET", PATH, pending)
    app.router.add_route("GET", PATH + "/{id}", show)
    app.router.add_route("POST", PATH + "/{id}", undo)
