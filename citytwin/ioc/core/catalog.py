"""The pilot's field-report categories (Đà Nẵng): Open311 services with their agency and deadline.

The agencies are the city bodies that handle each kind of report in Đà Nẵng's citizen-feedback
system; the deadlines are plausible service levels for a pilot, short for hazards (a dead traffic signal,
flooding, a fallen tree across a road) and longer for order and maintenance work.
"""

from __future__ import annotations

from datetime import timedelta

from .model import ServiceDef

_INFRA_CENTRE = "Sở Giao thông vận tải Đà Nẵng (Trung tâm Quản lý hạ tầng giao thông)"
_WARD = "UBND phường"

_SERVICES = (
    ServiceDef(
        code="road-damage", name="Hư hỏng mặt đường, ổ gà", group="Hạ tầng giao thông", agency=_INFRA_CENTRE,
        sla=timedelta(hours=72),
        description="Road surface damage: potholes, subsidence, broken manhole covers.",
        keywords=("ổ gà", "hư hỏng đường", "sụt lún", "nắp hố ga", "pothole", "road damage")),
    ServiceDef(
        code="flooding", name="Ngập úng", group="Thoát nước", agency="Công ty Thoát nước và Xử lý nước thải Đà Nẵng",
        sla=timedelta(hours=6),
        description="Street flooding or a blocked drain after rain.",
        keywords=("ngập", "ngập úng", "cống nghẹt", "thoát nước", "flood", "drain")),
    ServiceDef(
        code="waste", name="Rác thải, vệ sinh môi trường", group="Môi trường",
        agency="Công ty CP Môi trường đô thị Đà Nẵng (URENCO Đà Nẵng)", sla=timedelta(hours=24),
        description="Uncollected waste, illegal dumping, overflowing bins.",
        keywords=("rác", "đổ trộm rác", "thùng rác", "vệ sinh", "waste", "garbage", "dumping")),
    ServiceDef(
        code="streetlight", name="Đèn chiếu sáng công cộng hỏng", group="Hạ tầng giao thông",
        agency=_INFRA_CENTRE, sla=timedelta(hours=48),
        description="A street light that is out, flickering or on during the day.",
        keywords=("đèn đường", "chiếu sáng", "đèn hỏng", "streetlight", "lamp")),
    ServiceDef(
        code="traffic-signal", name="Đèn tín hiệu giao thông hỏng", group="Hạ tầng giao thông",
        agency=_INFRA_CENTRE, sla=timedelta(hours=4),
        description="A traffic signal that is dark, stuck or badly timed.",
        keywords=("đèn tín hiệu", "đèn giao thông", "đèn xanh đèn đỏ", "traffic light", "signal")),
    ServiceDef(
        code="sidewalk-encroachment", name="Lấn chiếm vỉa hè, lòng đường", group="Trật tự đô thị", agency=_WARD,
        sla=timedelta(hours=48),
        description="Sidewalk or carriageway occupied by stalls, parking or goods.",
        keywords=("lấn chiếm", "vỉa hè", "lòng đường", "buôn bán", "sidewalk", "encroachment")),
    ServiceDef(
        code="fallen-tree", name="Cây xanh gãy đổ", group="Cây xanh",
        agency="Công ty CP Công viên cây xanh Đà Nẵng", sla=timedelta(hours=12),
        description="A fallen or dangerous tree or branch, often after a storm.",
        keywords=("cây đổ", "cây gãy", "cành cây", "cây xanh", "fallen tree", "branch")),
    ServiceDef(
        code="traffic-incident", name="Sự cố, ùn tắc giao thông", group="Giao thông",
        agency="Công an thành phố Đà Nẵng (Phòng Cảnh sát giao thông)", sla=timedelta(hours=2),
        description="A crash, a broken-down vehicle or a traffic jam.",
        keywords=("tai nạn", "ùn tắc", "kẹt xe", "xe hỏng", "accident", "congestion", "jam")),
    ServiceDef(
        code="public-order", name="An ninh trật tự", group="An ninh trật tự", agency="Công an phường",
        sla=timedelta(hours=4),
        description="Fights, gatherings, racing or other disturbances of public order.",
        keywords=("đánh nhau", "tụ tập", "đua xe", "gây rối", "public order", "disturbance")),
    ServiceDef(
        code="water-supply", name="Sự cố cấp nước", group="Cấp nước",
        agency="Công ty CP Cấp nước Đà Nẵng (DAWACO)", sla=timedelta(hours=24),
        description="No water, low pressure, a burst main or dirty tap water.",
        keywords=("mất nước", "vỡ ống", "nước yếu", "nước bẩn", "water supply", "burst pipe")),
    ServiceDef(
        code="noise", name="Tiếng ồn", group="Môi trường", agency=_WARD, sla=timedelta(hours=48),
        description="Noise from karaoke, construction at night or businesses.",
        keywords=("tiếng ồn", "karaoke", "ồn ào", "noise")),
    ServiceDef(
        code="construction-order", name="Trật tự xây dựng", group="Trật tự đô thị",
        agency="UBND quận (Đội Kiểm tra quy tắc đô thị)", sla=timedelta(days=5),
        description="Unpermitted building, materials on the street, unsafe construction sites.",
        keywords=("xây dựng trái phép", "vật liệu xây dựng", "công trình", "construction", "permit")),
)

DEFAULT_CATALOG: dict[str, ServiceDef] = {service.code: service for service in _SERVICES}
