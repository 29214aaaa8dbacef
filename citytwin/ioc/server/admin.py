"""The admin API: API keys. A key is shown once, when it is made; afterwards only its digest exists."""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter, Depends, HTTPException, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from ..core.model import ApiKey, Role
from .deps import content_types, now, require

router = APIRouter(prefix="/admin/v1", tags=["admin"], dependencies=[Depends(content_types("application/json"))])
admin_key = require(Role.ADMIN)


class KeyIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Role
    label: str = Field("", max_length=200)
    device_id: str | None = Field(None, min_length=1, max_length=200, description="required for a device key")
    entity_type: str | None = Field(None, min_length=1, max_length=200,
                                    description="a device's entity type (Smart Data Models short name)")
    rate_per_s: float | None = Field(None, gt=0, le=1_000_000, description="default: the role's")


class KeyOut(BaseModel):
    digest: str
    role: Role
    label: str
    device_id: str | None = None
    entity_type: str | None = None
    rate_per_s: float | None = None
    created_at: datetime | None = None
    revoked: bool = False


class NewKey(KeyOut):
    key: str = Field(description="the key itself: shown this once only")


def key_out(key: ApiKey) -> dict:
    return {"digest": key.digest, "role": key.role, "label": key.label, "device_id": key.device_id,
            "entity_type": key.entity_type, "rate_per_s": key.rate_per_s, "created_at": key.created_at,
            "revoked": key.revoked}


@router.get("/keys", response_model=list[KeyOut], summary="All keys (digests, never the keys)")
def list_keys(request: Request, key: ApiKey = Depends(admin_key)) -> list[dict]:
    return [key_out(item) for item in request.app.state.ioc.keys()]


@router.post("/keys", response_model=NewKey, status_code=201, summary="Make a key")
def add_key(request: Request, body: KeyIn, key: ApiKey = Depends(admin_key), at: datetime = Depends(now)) -> dict:
    if body.role is Role.DEVICE and not body.device_id:
        raise HTTPException(400, "device_id: required for a device key")
    if body.role is not Role.DEVICE and (body.device_id or body.entity_type):
        raise HTTPException(400, "device_id: only a device key has a device_id or entity_type")
    plain, made = request.app.state.ioc.create_key(body.role, at, label=body.label, device_id=body.device_id,
                                                   entity_type=body.entity_type, rate_per_s=body.rate_per_s)
    return {**key_out(made), "key": plain}


@router.delete("/keys/{digest}", status_code=204, response_class=Response, summary="Revoke a key")
def revoke_key(request: Request, digest: str, key: ApiKey = Depends(admin_key)) -> Response:
    if digest == key.digest:  # locking out the last admin is easy and hard to undo
        raise HTTPException(409, "an admin key cannot revoke itself; use another admin key")
    request.app.state.ioc.revoke_key(digest)  # NotFound: 404
    request.app.state.key_cache.forget(digest)  # revoked here means revoked now, not in a few seconds
    return Response(status_code=204)
