"""Residents who notice problems, report them (app, hotline 1022, web), follow them and rate the result.

Noticing runs per clock hour: for each active problem, passes × notice_per_pass × severity factor
noticers among the trips that pass it, and residents-nearby × notice_at_home_per_day / 24 × severity
factor among those who live by it, each noticer reporting with their own propensity. Reports are
drawn directly as the thinned Poisson process (see exposure.py): same distribution, no work for the
many who notice and do nothing. A resident reports a problem at most once.

Each report is then a SimPy process: file it through its channel, check the status now and then by
token, and once the request is closed give a satisfaction score — or give up after a while.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from citytwin.ioc.core.catalog import DEFAULT_CATALOG
from citytwin.twin.ports.base import Receipt, Report, RequestView, answer
from citytwin.twin.scenario.schema import CitizenReporting

from .context import AgentContext
from .exposure import Exposure, Site
from .problems import SEVERITY_FACTOR, Problem, Problems

if TYPE_CHECKING:
    from .activities import PersonTrips
    from .organisation import Organisation
    from .population import Population

_M_PER_DEG_LAT = 111_320.0
MEDIA_URL = "https://media.citytwin.local/{key}.jpg"

# Satisfaction (1-5 stars). A request closed at once scores 5; the score falls by one star over the
# time allowed (the category's deadline), then by SATISFACTION_LATE_SLOPE stars per further deadline's
# worth of delay; a close whose result was not published to the reporter costs UNPUBLISHED_PENALTY.
SATISFACTION_IN_TIME_DROP = 1.0
SATISFACTION_LATE_SLOPE = 1.5
UNPUBLISHED_PENALTY = 1.5
SATISFACTION_NOISE_SD = 0.5

# Notes that say where a request stands rather than what was done: the IOC's intake note and the usual
# progress notes of an agency. A request closed with one of these as its latest note (or with a note
# the reporter already saw while it was open) has not published its result.
PROGRESS_NOTE_PREFIXES = ("Report received", "Đã tiếp nhận", "Đã chuyển", "Đã giao", "Đang xử lý")


def satisfaction_score(elapsed_s: float, deadline_s: float, published: bool, noise: float) -> float:
    """Stars from how long the fix took against the deadline, whether the result was published to the
    reporter, and the reporter's own mood (`noise`, a standard normal draw)."""
    r = max(elapsed_s, 0.0) / max(deadline_s, 1.0)
    raw = (5.0 - SATISFACTION_IN_TIME_DROP * min(r, 1.0) - SATISFACTION_LATE_SLOPE * max(r - 1.0, 0.0)
           - (0.0 if published else UNPUBLISHED_PENALTY) + SATISFACTION_NOISE_SD * noise)
    return float(min(5.0, max(1.0, round(raw))))


def result_published(view: RequestView, seen_open: set[str]) -> bool:
    note = view.note.strip()
    return bool(note) and note not in seen_open and not note.startswith(PROGRESS_NOTE_PREFIXES)


# What residents write, by category; {where} names the street, alley, bridge or junction.
_DESCRIPTIONS: dict[str, tuple[str, ...]] = {
    "road-damage": ("Có ổ gà trên {where}, xe máy đi qua rất dễ té.",
                    "Đoạn {where} bị sụt lún, hư hỏng mặt đường."),
    "waste": ("Rác thải để lâu ngày tại {where}, bốc mùi hôi thối.",
              "Có người đổ trộm rác ở {where}, chưa được thu gom."),
    "flooding": ("Nước ngập sâu tại {where}, xe máy chết máy giữa đường.",
                 "Cống thoát nước bị nghẹt, ngập úng ở {where}."),
    "streetlight": ("Đèn đường trên {where} bị hỏng, ban đêm tối om.",
                    "Đèn chiếu sáng ở {where} không sáng mấy hôm nay."),
    "traffic-signal": ("Đèn tín hiệu giao thông tại {where} bị tắt, xe cộ đi lộn xộn.",
                       "Đèn xanh đèn đỏ ở {where} bị hỏng, rất dễ xảy ra va chạm."),
    "sidewalk-encroachment": ("Hàng quán lấn chiếm vỉa hè trên {where}, người đi bộ phải xuống lòng đường.",
                              "Xe đậu lấn chiếm lòng đường trên {where}, gây ùn tắc."),
    "fallen-tree": ("Cây xanh gãy đổ trên {where}, chắn ngang đường.",
                    "Cành cây lớn gãy rơi xuống {where}, rất nguy hiểm."),
    "noise": ("Hát karaoke gây ồn ào ở {where} đến khuya.",
              "Công trình thi công gây tiếng ồn ở {where} vào ban đêm."),
}
_NAMED_PLACES = ("Kiệt", "Hẻm", "Cầu", "Ngõ")  # say "kiệt 3/4 Lê Lợi", not "đường Kiệt 3/4 Lê Lợi"
_URGENCY = ("", " Đề nghị xử lý sớm.", " Rất nguy hiểm, đề nghị xử lý khẩn cấp!")


def _street(name: str) -> str:
    return name[0].lower() + name[1:] if name.startswith(_NAMED_PLACES) else f"đường {name}"


class Citizens:
    def __init__(self, ctx: AgentContext, population: "Population", spec: CitizenReporting, problems: Problems,
                 organisation: "Organisation", rng: np.random.Generator):
        self.ctx, self.population, self.spec = ctx, population, spec
        self.problems, self.organisation, self.rng = problems, organisation, rng
        self.exposure = Exposure(ctx.city, population, home_radius_m=spec.home_radius_m)
        self._sites: dict[str, Site] = {}
        self._reporters: dict[str, set[int]] = {}  # problem -> residents who reported it (or are calling)
        self._slot: tuple[float, float] | None = None  # the clock hour being played
        self._reports = 0
        self._places: dict[str, str] = {}  # problem -> how residents name where it is
        self._channels = list(spec.channels)
        self._channel_cum = np.cumsum([spec.channels[c] for c in self._channels])
        problems.on_start.append(self._problem_started)

    # -- the contract ----------------------------------------------------------------------------------
    def set_day(self, trips: "PersonTrips") -> None:
        self.exposure.set_day(trips)

    def start(self) -> None:
        self.ctx.env.process(self._hours())

    # -- noticing --------------------------------------------------------------------------------------
    def _hours(self):
        env, ctx = self.ctx.env, self.ctx
        while env.now < ctx.duration_s:
            t0 = env.now
            t1 = min(t0 + 3600.0 - ctx.clock(t0) % 3600.0, ctx.duration_s)
            self._slot = (t0, t1)
            active = self.problems.active()
            self._prune(active)
            self._draw(active, np.full(len(active), t0), t1)
            yield env.timeout(t1 - t0)
        self._slot = None

    def _problem_started(self, problem: Problem) -> None:
        """A problem that starts within the hour is exposed for the rest of it."""
        if self._slot is not None and problem.start_t < self._slot[1]:
            self._draw([problem], np.array([max(problem.start_t, self._slot[0])]), self._slot[1])

    def _site(self, problem: Problem) -> Site:
        site = self._sites.get(problem.id)
        if site is None:
            site = self._sites[problem.id] = self.exposure.site(problem.link, problem.node, problem.x, problem.y)
        return site

    def _prune(self, active: list[Problem]) -> None:
        """Forget what was kept for fixed problems (reports still pending about them check `active`)."""
        live = {p.id for p in active}
        for kept in (self._sites, self._reporters, self._places):
            for pid in [pid for pid in kept if pid not in live]:
                del kept[pid]

    def _draw(self, problems: list[Problem], t_from: np.ndarray, t1: float) -> None:
        """Reports about `problems` over [t_from, t1): Poisson counts, then who and when."""
        if not problems:
            return
        spec = self.spec
        sites = [self.exposure.refresh(self._site(p)) for p in problems]
        factor = np.array([SEVERITY_FACTOR[p.severity - 1] for p in problems])
        trip_weight = np.array([s.trip_weight for s in sites])
        home_weight = np.array([s.home_weight for s in sites])
        span = np.maximum(t1 - t_from, 0.0)
        share = self.exposure.departure_share(t_from, t1)
        lam_trip = trip_weight * share * np.minimum(1.0, spec.notice_per_pass * factor)
        lam_home = home_weight * np.minimum(1.0, spec.notice_at_home_per_day * factor) * span / 86400.0
        k_trip = self.rng.poisson(lam_trip)
        k_home = self.rng.poisson(lam_home)
        for i in np.flatnonzero(k_trip + k_home):
            who = np.concatenate([self.exposure.pick_travellers(sites[i], int(k_trip[i]), self.rng),
                                  self.exposure.pick_home(sites[i], int(k_home[i]), self.rng)])
            when = t_from[i] + self.rng.random(len(who)) * span[i]
            order = np.argsort(when, kind="stable")
            for resident, t in zip(who[order], when[order]):
                self.ctx.env.process(self._report(problems[i], int(resident), float(t)))

    # -- reporting -------------------------------------------------------------------------------------
    def _report(self, problem: Problem, resident: int, t: float):
        env = self.ctx.env
        if t > env.now:
            yield env.timeout(t - env.now)
        reporters = self._reporters.setdefault(problem.id, set())
        if not problem.active or resident in reporters:
            return  # fixed meanwhile, or this resident has already reported it
        reporters.add(resident)
        report = self._compose(problem, resident)
        t_report = env.now
        if report.channel == "hotline":
            receipt = yield self.organisation.call(report)
            if receipt is None:  # hung up in the queue: may try again when they notice it again
                reporters.discard(resident)
                return
        else:
            receipt = yield from answer(self.ctx.port.submit(report, env.now))
            if receipt is None:  # a live IOC failed to take it: they may try again when they notice it again
                reporters.discard(resident)
                return
            self.organisation.online_report(report, receipt)
        yield from self._follow(report, receipt, t_report)

    def _compose(self, problem: Problem, resident: int) -> Report:
        channel = self._channels[min(int(np.searchsorted(self._channel_cum, self.rng.random() * self._channel_cum[-1],
                                                         side="right")), len(self._channels) - 1)]
        if channel == "app" and not self.population.smartphone[resident]:
            channel = "hotline"
        key = f"r{self._reports}"
        self._reports += 1
        lon, lat = self._jitter(problem, self.spec.location_error_m[channel])
        return Report(key=key, category=problem.category, lon=lon, lat=lat,
                      description=self._describe(problem), channel=channel,
                      media_url=MEDIA_URL.format(key=key) if channel == "app" else None,
                      problem=problem.id, resident=resident)

    def _jitter(self, problem: Problem, error_m: float) -> tuple[float, float]:
        """The position as reported: GPS error in the app, a described address otherwise (the error is
        the root-mean-square distance, so each axis gets error/√2)."""
        dx, dy = self.rng.normal(0.0, error_m / math.sqrt(2.0), 2)
        lat = problem.lat + dy / _M_PER_DEG_LAT
        lon = problem.lon + dx / (_M_PER_DEG_LAT * math.cos(math.radians(problem.lat)))
        return float(lon), float(lat)

    def _describe(self, problem: Problem) -> str:
        texts = _DESCRIPTIONS.get(problem.category)
        where = self._where(problem)
        if texts is None:
            service = DEFAULT_CATALOG.get(problem.category)
            text = f"{service.name if service else problem.category} {where}."
        else:
            text = texts[int(self.rng.integers(len(texts)))].format(where=where)
        return text + _URGENCY[problem.severity - 1]

    def _where(self, problem: Problem) -> str:
        if problem.id not in self._places:
            self._places[problem.id] = self._place(problem)
        return self._places[problem.id]

    def _place(self, problem: Problem) -> str:
        links = self.ctx.city.links
        if problem.link >= 0 and links.name[problem.link]:
            return _street(links.name[problem.link])
        names = sorted(set(links.name[(links.dst == problem.node) & (links.name != "")]))
        streets = [n for n in names if not n.startswith(_NAMED_PLACES)]
        if len(streets) >= 2:
            return f"nút giao {streets[0]} - {streets[1]}"
        if names:
            return _street((streets or names)[0])
        return "khu dân cư gần nhà tôi" if problem.link < 0 else "tuyến đường này"

    # -- following up ----------------------------------------------------------------------------------
    def _follow(self, report: Report, receipt: Receipt, t_report: float):
        """Check by token every Exp(check_interval) until closed (then rate it), the give-up time, or the
        end of the run. A duplicate closed by an operator is followed through its original."""
        env, ctx, spec, port = self.ctx.env, self.ctx, self.spec, self.ctx.port
        deadline_s = receipt.deadline_t - env.now
        give_up_t = t_report + spec.give_up_after
        following = receipt.request_id
        own_closed_t = None
        seen_open: set[str] = set()
        while True:
            next_t = env.now + self.rng.exponential(spec.check_interval)
            if next_t >= give_up_t:
                if give_up_t < ctx.duration_s:
                    yield env.timeout(max(give_up_t - env.now, 0.0))
                    ctx.ledger.append("report.given_up", env.now, report.key, request_id=following,
                                      duration_s=env.now - t_report)
                return
            if next_t >= ctx.duration_s:
                return
            yield env.timeout(next_t - env.now)
            if following == receipt.request_id:
                view = yield from answer(port.by_token(receipt.token, env.now))
                if view is not None and view.closed and view.duplicate_of is not None:
                    own_closed_t = view.updated_t
                    following = view.duplicate_of
                    view = yield from answer(port.public(following, env.now))
            else:
                view = yield from answer(port.public(following, env.now))
            if view is None:  # a live IOC did not answer: the app shows nothing new, they look again later
                continue
            ctx.ledger.append("report.checked", env.now, report.key, status=view.status, request_id=following)
            if not view.closed:
                seen_open.add(view.note.strip())
                continue
            closed_t = view.updated_t if own_closed_t is None else max(view.updated_t, own_closed_t)
            published = result_published(view, seen_open)
            stars = satisfaction_score(closed_t - t_report, deadline_s, published, self.rng.standard_normal())
            ctx.ledger.append("report.feedback", env.now, report.key, satisfaction=stars, published=published,
                              request_id=following, duration_s=closed_t - t_report)
            return
