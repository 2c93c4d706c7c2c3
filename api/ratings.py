"""The call-quality rating a participant gives after the call, and the admin view of them.

POST /api/video-calls/rating/{sessionId}   body {"rating": 1..5, "reasons": ["audio", ...]}
    the caller's rating of the session's call (participants only, once each; counted against
    RATE_LIMIT_API_PER_MIN like every /api/video-calls/* endpoint)
GET /api/admin/metrics/ratings/{sessionId}
    every rating given for that session (admin role only), also when the call's quality summary
    has not been written

The handlers only translate; `calls.ratings.CallRatings` decides, audits and stores.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from aiohttp import web

from api.auth import identify, require_admin
from api.errors import ok, read_json_object
from api.keys import RATINGS_KEY, SERVICE_KEY, STORAGE_KEY
from api.routes import origin
from api.validation import session_id_param
from calls.ratings import RATING_PERIOD, Rating, parse_rating
from storage.base import format_datetime

RATE_ROUTE = "/api/video-calls/rating/{sessionId}"
ADMIN_ROUTE = "/api/admin/metrics/ratings/{sessionId}"

routes = web.RouteTableDef()


def rating_json(rating: Rating) -> dict[str, Any]:
    return {
        "sessionId": rating.session_id,
        "roomId": rating.room_id,
        "role": rating.role,
        "rating": rating.rating,
        "reasons": list(rating.reasons),
        "ratedAt": format_datetime(rating.rated_at),
    }


def _doc_json(doc: dict[str, Any]) -> dict[str, Any]:
    return {
        k: format_datetime(v) if isinstance(v, datetime) else v
        for k, v in doc.items()
        if k not in ("_id", "period")
    }


@routes.post(RATE_ROUTE)
async def rate_call(request: web.Request) -> web.Response:
    # Who asks first (an outsider learns nothing from a 400 about the body), then what.
    access = await request.app[SERVICE_KEY].authorize(
        identify(request), request.match_info["sessionId"], origin(request)
    )
    given = parse_rating(await read_json_object(request))
    rating = await request.app[RATINGS_KEY].rate(access, given)
    return ok(
        {"message": "Thank you for rating the call", "rating": rating_json(rating)}, status=201
    )


@routes.get(ADMIN_ROUTE)
async def session_ratings(request: web.Request) -> web.Response:
    require_admin(request)
    session_id = session_id_param(request.match_info["sessionId"])
    docs = await request.app[STORAGE_KEY].find_call_metrics(
        {"period": RATING_PERIOD, "sessionId": session_id}, limit=100
    )
    docs.sort(key=lambda d: d["ratedAt"])
    return ok({"sessionId": session_id, "ratings": [_doc_json(d) for d in docs]})
