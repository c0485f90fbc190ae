"""The review page's routes (Starlette). Each handler reads the session, asks the API (api.py), and renders what
views.py made of the answer; the gRPC error of a call becomes the page's error (errors())."""

from __future__ import annotations

import functools
import logging
from pathlib import Path

import grpc
import jinja2
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import MutableHeaders
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from umbra.client.errors import UmbraRpcError
from umbra.services.coordinator.review import views
from umbra.services.coordinator.review.api import ANSWERS, CoordinatorApi
from umbra.services.coordinator.review.session import COOKIE, Session, Sessions

log = logging.getLogger(__name__)
HERE = Path(__file__).parent
HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; frame-src 'self'; style-src 'self'; "
                               "script-src 'self'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}
# The report is another page (job_report.py's, self-contained: inline styles, images as data: URLs), shown in a
# frame of the job page: no script at all, sandboxed, framed by this site only.
REPORT_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; img-src data:; style-src 'unsafe-inline'; "
                               "frame-ancestors 'self'; sandbox",
    "X-Frame-Options": "SAMEORIGIN",
}
NO_STORE = {"Cache-Control": "no-store"}
STATUS_FOR = {
    grpc.StatusCode.NOT_FOUND: (404, "Not found"),
    grpc.StatusCode.PERMISSION_DENIED: (403, "Not allowed"),
    grpc.StatusCode.INVALID_ARGUMENT: (400, "Not accepted"),
    grpc.StatusCode.FAILED_PRECONDITION: (409, "Not possible now"),
    grpc.StatusCode.ABORTED: (409, "Not possible now"),
    grpc.StatusCode.ALREADY_EXISTS: (409, "Not possible now"),
    grpc.StatusCode.RESOURCE_EXHAUSTED: (429, "Too many requests at once"),
    grpc.StatusCode.UNAVAILABLE: (503, "The coordinator is not answering"),
    grpc.StatusCode.DEADLINE_EXCEEDED: (503, "The coordinator is not answering"),
}


class SecurityHeaders:
    """Adds HEADERS to every response that does not set them itself (the report frame sets its own)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in HEADERS.items():
                    if name not in headers:
                        headers[name] = value
            await send(message)

        await self.app(scope, receive, send_with_headers)


class ReviewPage:
    """The routes, on one API client and one cookie codec."""

    def __init__(self, api: CoordinatorApi, sessions: Sessions, *, secure_cookies: bool):
        self.api, self.sessions, self.secure = api, sessions, secure_cookies
        env = jinja2.Environment(loader=jinja2.FileSystemLoader(HERE / "templates"), autoescape=True,
                                 undefined=jinja2.StrictUndefined)
        env.filters["pct"] = views.percent
        env.filters["eps"] = views.epsilon_text  # ε spent or charged: rounded up
        env.filters["eps_left"] = views.epsilon_left
        self.templates = Jinja2Templates(env=env)

    # -- helpers ------------------------------------------------------------------------------------------------

    def render(self, request: Request, name: str, status: int = 200, session: Session | None = None, **context):
        return self.templates.TemplateResponse(request, name, {"session": session, **context}, status_code=status,
                                               headers=NO_STORE)

    def session(self, request: Request) -> Session | None:
        return self.sessions.read(request.cookies.get(COOKIE))

    def signed_out(self) -> Response:
        response = RedirectResponse("/signin", status_code=303)
        response.delete_cookie(COOKIE, path="/", secure=self.secure, httponly=True, samesite="strict")
        return response

    def error(self, request: Request, exc: UmbraRpcError, session: Session | None) -> Response:
        if exc.code == grpc.StatusCode.UNAUTHENTICATED:
            return self.signed_out()  # the key was revoked since sign-in
        status, title = STATUS_FOR.get(exc.code, (502, "Something went wrong"))
        if status == 502:
            log.warning("review page: %s answered %s", request.url.path, exc.code.name)
        message = exc.message if status in (400, 409) else ""
        return self.render(request, "error.html", status, session, title=title, message=message,
                           not_found=status == 404)

    async def csrf_ok(self, request: Request, session: Session) -> tuple[bool, dict]:
        form = await request.form()
        presented = form.get("csrf") or request.headers.get("x-csrf-token")
        return session.csrf_ok(presented if isinstance(presented, str) else None), form

    def forbidden(self, request: Request, session: Session | None) -> Response:
        return self.render(request, "error.html", 403, session, title="Refused",
                           message="The form's security token is missing or wrong: reload the page and try again.",
                           not_found=False)

    # -- sign-in ------------------------------------------------------------------------------------------------

    async def signin_form(self, request: Request) -> Response:
        return self.render(request, "signin.html", token=self.sessions.signin_token(), problem="")

    async def signin(self, request: Request) -> Response:
        form = await request.form()
        if not self.sessions.signin_token_ok(form.get("csrf") or request.headers.get("x-csrf-token")):
            return self.forbidden(request, None)
        key = str(form.get("api_key", "")).strip()
        try:
            if not key:
                raise UmbraRpcError(grpc.StatusCode.UNAUTHENTICATED, "no key")
            await run_in_threadpool(self.api.check_key, key)
        except UmbraRpcError as exc:
            if exc.code not in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
                return self.error(request, exc, None)
            return self.render(request, "signin.html", 401, token=self.sessions.signin_token(),
                               problem="That API key was not accepted. Check it and try again.")
        cookie, _ = self.sessions.create(key)
        response = RedirectResponse("/", status_code=303)
        response.set_cookie(COOKIE, cookie, max_age=self.sessions.lifetime, path="/", secure=self.secure,
                            httponly=True, samesite="strict")
        return response

    async def signout(self, request: Request) -> Response:
        session = self.session(request)
        if session is None:
            return self.signed_out()
        ok, _ = await self.csrf_ok(request, session)
        return self.signed_out() if ok else self.forbidden(request, session)

    # -- pages --------------------------------------------------------------------------------------------------

    async def index(self, request: Request, session: Session) -> Response:
        jobs = await run_in_threadpool(self.api.list_jobs, session.api_key)
        rows = []
        for job in jobs:
            op = None
            if job.state not in views.FINISHED and job.operation and len(rows) < 50:
                op = await run_in_threadpool(self.api.operation, session.api_key, job.operation)
            rows.append(views.job_summary(job, op))
        return self.render(request, "jobs.html", session=session, jobs=rows)

    async def job_page(self, request: Request, session: Session) -> Response:
        job_id = request.path_params["job"]
        state = await run_in_threadpool(self.job_state, session.api_key, job_id)
        return self.render(request, "job.html", session=session, **state)

    def job_state(self, key: str, job_id: str) -> dict:
        """Everything the job page shows (in a worker thread: several calls)."""
        job = self.api.job(key, job_id)
        op = self.api.operation(key, job.operation) if job.operation else None
        summary = views.job_summary(job, op)
        shown, view = None, summary["state_name"]
        rounds = self.api.rounds(key, job_id)
        if summary["awaiting_feedback"]:
            try:
                shown = views.preview(self.api.preview(key, job_id), views.epsilon_spent(job, op, rounds))
                view += f":{shown['number']}"
            except UmbraRpcError as exc:
                if exc.code not in (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.NOT_FOUND):
                    raise
                view += ":waiting"  # the next round is being made
        return {"job": summary, "preview": shown, "rounds": views.rounds_table(rounds), "view": view,
                "has_report": job.state == views.State.STATE_SUCCEEDED}

    async def status(self, request: Request, session: Session) -> Response:
        state = await run_in_threadpool(self.status_of, session.api_key, request.path_params["job"])
        return JSONResponse(state, headers=NO_STORE)

    def status_of(self, key: str, job_id: str) -> dict:
        job = self.api.job(key, job_id)
        op = self.api.operation(key, job.operation) if job.operation else None
        summary = views.job_summary(job, op)
        view = summary["state_name"]
        if summary["awaiting_feedback"]:
            try:
                view += f":{views.round_number(self.api.preview(key, job_id).round.name)}"
            except UmbraRpcError as exc:
                if exc.code not in (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.NOT_FOUND):
                    raise
                view += ":waiting"
        return {"state": summary["state"], "finished": summary["finished"], "view": view, **summary["progress"]}

    async def image(self, request: Request, session: Session) -> Response:
        p = request.path_params
        if p["kind"] not in ("original", "released"):
            return Response("not found", 404, headers=NO_STORE)
        shown = await run_in_threadpool(self.api.preview_of_round, session.api_key, p["job"], p["number"])
        if shown is None or not 0 <= p["index"] < len(shown.pairs):
            return Response("not found", 404, headers=NO_STORE)
        pair = shown.pairs[p["index"]]
        picture = pair.original if p["kind"] == "original" else pair.anonymized
        return Response(picture.data, media_type=picture.media_type or "image/png", headers=NO_STORE)

    async def feedback(self, request: Request, session: Session) -> Response:
        ok, form = await self.csrf_ok(request, session)
        if not ok:
            return self.forbidden(request, session)
        job_id, answer = request.path_params["job"], form.get("answer")
        if answer not in ANSWERS:
            return self.render(request, "error.html", 400, session, title="Not accepted", not_found=False,
                               message="Answer with Accept, More privacy or Less privacy.")
        flagged = [str(f) for f in form.getlist("flagged")]
        await run_in_threadpool(self.api.answer, session.api_key, job_id, request.path_params["number"], answer,
                                flagged)
        return RedirectResponse(f"/jobs/{job_id}", status_code=303)

    # -- the report ---------------------------------------------------------------------------------------------

    async def report(self, request: Request, session: Session) -> Response:
        report = await run_in_threadpool(self.api.report, session.api_key, request.path_params["job"])
        return Response(report.html_content, media_type="text/html; charset=utf-8",
                        headers={**NO_STORE, **REPORT_HEADERS})

    async def report_json(self, request: Request, session: Session) -> Response:
        job_id = request.path_params["job"]
        report = await run_in_threadpool(self.api.report, session.api_key, job_id)
        return Response(report.json_content, media_type="application/json", headers={
            **NO_STORE, "Content-Disposition": f'attachment; filename="{job_id}-report.json"'})

    async def report_pdf(self, request: Request, session: Session) -> Response:
        job_id = request.path_params["job"]
        report = await run_in_threadpool(self.api.report, session.api_key, job_id)
        data = report.pdf_content  # inline when the report is small enough; else read by the ref GetReport gave
        if not data and report.report_pdf.key:
            data = await run_in_threadpool(self.api.object_bytes, report.report_pdf)
        if not data:
            return self.render(request, "error.html", 404, session, title="Not found", not_found=True,
                               message="This report has no PDF.")
        return Response(data, media_type="application/pdf", headers={
            **NO_STORE, "Content-Disposition": f'attachment; filename="{job_id}-report.pdf"'})


def signed_in(handler, *, page: bool = True):
    """Runs `handler(request, session)` for a signed-in request; otherwise to the sign-in form (a page) or 401
    (images, JSON). An API error becomes the page's error."""
    @functools.wraps(handler)
    async def endpoint(request: Request) -> Response:
        owner: ReviewPage = handler.__self__
        session = owner.session(request)
        if session is None:
            return owner.signed_out() if page else JSONResponse({"error": "signed out"}, 401, headers=NO_STORE)
        try:
            return await handler(request, session)
        except UmbraRpcError as exc:
            if page:
                return owner.error(request, exc, session)
            status, title = STATUS_FOR.get(exc.code, (502, "Something went wrong"))
            return JSONResponse({"error": title}, 401 if exc.code == grpc.StatusCode.UNAUTHENTICATED else status,
                                headers=NO_STORE)
    return endpoint


def create_app(api: CoordinatorApi, sessions: Sessions, *, secure_cookies: bool) -> Starlette:
    page = ReviewPage(api, sessions, secure_cookies=secure_cookies)
    routes = [
        Route("/", signed_in(page.index)),
        Route("/signin", page.signin_form, methods=["GET"]),
        Route("/signin", page.signin, methods=["POST"]),
        Route("/signout", page.signout, methods=["POST"]),
        Route("/jobs/{job}", signed_in(page.job_page)),
        Route("/jobs/{job}/status", signed_in(page.status, page=False)),
        Route("/jobs/{job}/rounds/{number:int}/feedback", signed_in(page.feedback), methods=["POST"]),
        Route("/jobs/{job}/rounds/{number:int}/{kind}/{index:int}", signed_in(page.image, page=False)),
        Route("/jobs/{job}/report", signed_in(page.report)),
        Route("/jobs/{job}/report.json", signed_in(page.report_json)),
        Route("/jobs/{job}/report.pdf", signed_in(page.report_pdf)),
        Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
    ]
    app = Starlette(routes=routes)
    app.add_middleware(SecurityHeaders)
    return app

