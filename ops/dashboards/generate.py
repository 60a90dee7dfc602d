#!/usr/bin/env python3
"""Generates ops/dashboards/{executive,on-call,debug}.json (Grafana, schemaVersion 39).

The JSON files are checked in; edit this script and run `python3 ops/dashboards/generate.py`
to regenerate them. Every metric name used must exist in crates/core/src/metrics.rs or
crates/lag/src/lib.rs, or be a recording rule of ops/alerts/reflex.rules.yml
(scripts/check-ops and tests/ops_assets.rs check this).
"""
import json
import os

DS = {"type": "prometheus", "uid": "${datasource}"}
RI = "$__rate_interval"
HERE = os.path.dirname(os.path.abspath(__file__))
SLI_OK = 'result="succeeded"'
SLI_ALL = 'result=~"succeeded|failed"'


class Layout:
    def __init__(self):
        self.x = 0
        self.y = 0
        self.row_h = 0
        self.next_id = 1

    def place(self, w, h):
        if self.x + w > 24:
            self.x = 0
            self.y += self.row_h
            self.row_h = 0
        pos = {"x": self.x, "y": self.y, "w": w, "h": h}
        self.x += w
        self.row_h = max(self.row_h, h)
        return pos

    def new_row(self):
        if self.x:
            self.x = 0
            self.y += self.row_h
            self.row_h = 0

    def id(self):
        i = self.next_id
        self.next_id += 1
        return i


def targets(exprs):
    out = []
    for i, (expr, legend) in enumerate(exprs):
        out.append({
            "datasource": DS,
            "refId": chr(ord("A") + i),
            "expr": expr,
            "legendFormat": legend,
            "range": True,
        })
    return out


def panel(lay, kind, title, exprs, w=12, h=8, unit="short", description="", **extra):
    p = {
        "id": lay.id(),
        "type": kind,
        "title": title,
        "description": description,
        "datasource": DS,
        "gridPos": lay.place(w, h),
        "targets": targets(exprs),
        "fieldConfig": {
            "defaults": {"unit": unit, "color": {"mode": "palette-classic"}},
            "overrides": [],
        },
        "options": {},
    }
    d = p["fieldConfig"]["defaults"]
    if "thresholds" in extra:
        d["thresholds"] = {"mode": "absolute", "steps": extra.pop("thresholds")}
        d["color"] = {"mode": "thresholds"}
    if "mappings" in extra:
        d["mappings"] = extra.pop("mappings")
    if "decimals" in extra:
        d["decimals"] = extra.pop("decimals")
    if "min" in extra:
        d["min"] = extra.pop("min")
    if "max" in extra:
        d["max"] = extra.pop("max")
    if kind == "timeseries":
        d["custom"] = {"drawStyle": "line", "lineWidth": 1, "fillOpacity": 10, "showPoints": "never"}
        p["options"] = {"legend": {"displayMode": "table", "placement": "bottom", "calcs": ["lastNotNull", "max"]},
                        "tooltip": {"mode": "multi", "sort": "desc"}}
    elif kind == "stat":
        p["options"] = {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                        "colorMode": "background", "graphMode": "area", "textMode": "auto"}
    elif kind == "state-timeline":
        p["options"] = {"showValue": "auto", "mergeValues": True, "rowHeight": 0.9}
    elif kind == "table":
        for t in p["targets"]:
            t["format"] = "table"
            t["instant"] = True
            t["range"] = False
    p.update(extra)
    return p


def row(lay, title):
    lay.new_row()
    p = {"id": lay.id(), "type": "row", "title": title, "collapsed": False,
         "gridPos": {"x": 0, "y": lay.y, "w": 24, "h": 1}, "panels": []}
    lay.y += 1
    return p


def var_query(name, label, query, multi=True):
    return {
        "name": name,
        "label": label,
        "type": "query",
        "datasource": DS,
        "query": {"query": query, "refId": "PrometheusVariableQueryEditor-VariableQuery"},
        "definition": query,
        "refresh": 2,
        "multi": multi,
        "includeAll": True,
        "allValue": ".*",
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
        "sort": 1,
    }


def dashboard(uid, title, description, panels, variables, tags):
    ds_var = {
        "name": "datasource",
        "label": "Prometheus",
        "type": "datasource",
        "query": "prometheus",
        "current": {},
        "refresh": 1,
        "hide": 0,
    }
    return {
        "__inputs": [],
        "uid": uid,
        "title": title,
        "description": description,
        "tags": ["reflex"] + tags,
        "schemaVersion": 39,
        "version": 1,
        "editable": True,
        "graphTooltip": 1,
        "time": {"from": "now-6h", "to": "now"},
        "refresh": "30s",
        "timezone": "utc",
        "templating": {"list": [ds_var] + variables},
        "annotations": {"list": []},
        "links": [
            {"title": "Reflex dashboards", "type": "dashboards", "tags": ["reflex"], "asDropdown": True}
        ],
        "panels": panels,
    }


PCT = [{"color": "red", "value": None}, {"color": "orange", "value": 0.98}, {"color": "green", "value": 0.99}]
BUDGET = [{"color": "red", "value": None}, {"color": "orange", "value": 0.25}, {"color": "green", "value": 0.5}]
BURN = [{"color": "green", "value": None}, {"color": "orange", "value": 1}, {"color": "red", "value": 6}]
LAG_S = [{"color": "green", "value": None}, {"color": "orange", "value": 30}, {"color": "red", "value": 120}]
ZERO_OK = [{"color": "green", "value": None}, {"color": "red", "value": 1}]
BREAKER_MAP = [{"type": "value", "options": {
    "0": {"text": "closed", "color": "green", "index": 0},
    "1": {"text": "half-open", "color": "orange", "index": 1},
    "2": {"text": "open", "color": "red", "index": 2}}}]
STATUSES = ["OK", "WARN", "STALL", "STOP", "ERR"]
STATUS_MAP = [{"type": "value", "options": {
    str(n): {"text": st, "color": c, "index": n}
    for n, (st, c) in enumerate(zip(STATUSES, ["green", "yellow", "orange", "red", "purple"]))}}]
KILL_MAP = [{"type": "value", "options": {
    "0": {"text": "off", "color": "green", "index": 0},
    "1": {"text": "ON: no actions", "color": "red", "index": 1}}}]


def executive():
    lay = Layout()
    p = []
    p.append(row(lay, "Automation outcomes (SLO: 99% of action attempts succeed)"))
    p.append(panel(lay, "stat", "Automation success rate (M3, dashboard range)", [(
        f'sum(increase(reflex_actions_total{{{SLI_OK}}}[$__range])) / sum(increase(reflex_actions_total{{{SLI_ALL}}}[$__range]))',
        "success")], w=6, h=6, unit="percentunit", thresholds=PCT, decimals=2,
        description="succeeded / (succeeded + failed) from reflex_actions_total. duplicate_suppressed, dry_run, held and rejected are not attempts."))
    p.append(panel(lay, "stat", "Error budget remaining (M6, 30d)", [(
        f'1 - (sum(increase(reflex_actions_total{{result="failed"}}[30d])) / sum(increase(reflex_actions_total{{{SLI_ALL}}}[30d]))) / 0.01',
        "remaining")], w=6, h=6, unit="percentunit", thresholds=BUDGET, decimals=1,
        description="Share of the 30-day error budget (1% of attempts) not yet spent. Negative: the SLO is breached."))
    p.append(panel(lay, "stat", "Error budget burn rate (M6)", [
        ("reflex:actions_error_ratio:rate1h / 0.01", "1h"),
        ("reflex:actions_error_ratio:rate6h / 0.01", "6h"),
        ("reflex:actions_error_ratio:rate3d / 0.01", "3d")],
        w=12, h=6, unit="suffix:x", thresholds=BURN, decimals=1,
        description="Burn rate = error ratio / 0.01 (recording rules in ops/alerts/reflex.rules.yml). Pages at 14.4x (1h and 5m) and 6x (6h and 30m); ticket at 1x (3d and 6h)."))
    p.append(panel(lay, "timeseries", "Automation success rate by action (M3)", [(
        f'sum by (action) (rate(reflex_actions_total{{{SLI_OK}}}[{RI}])) / sum by (action) (rate(reflex_actions_total{{{SLI_ALL}}}[{RI}]))',
        "{{action}}")], unit="percentunit", max=1))
    p.append(panel(lay, "timeseries", "Actions per second by result", [(
        f'sum by (result) (rate(reflex_actions_total[{RI}]))', "{{result}}")], unit="ops"))
    p.append(row(lay, "Flow"))
    p.append(panel(lay, "timeseries", "Events per second by stage (M1)", [
        (f'sum by (stage) (rate(reflex_events_in_total[{RI}]))', "{{stage}} in"),
        (f'sum by (stage) (rate(reflex_events_out_total[{RI}]))', "{{stage}} out"),
        (f'sum by (stage) (rate(reflex_events_dropped_total[{RI}]))', "{{stage}} dropped by rule"),
    ], unit="ops"))
    p.append(panel(lay, "timeseries", "Event delivery success by stage (M1)", [(
        f'1 - sum by (stage) (rate(reflex_dead_letters_total[{RI}])) / sum by (stage) (rate(reflex_events_in_total[{RI}]))',
        "{{stage}}")], unit="percentunit", max=1,
        description="1 - dead letters / events taken, per stage (target 99.9%)."))
    p.append(panel(lay, "timeseries", "Held (blast-radius) rate (M5 proxy)", [(
        f'sum(rate(reflex_actions_total{{result="held"}}[{RI}])) / sum(rate(reflex_actions_total[{RI}]))',
        "held / all outcomes")], w=8, unit="percentunit",
        description="Reflex has no automated rollback; requests held by the blast-radius cap are the closest signal of automation backfiring (target < 1%)."))
    p.append(panel(lay, "timeseries", "Duplicate action rate (M8)", [(
        f'sum(rate(reflex_dedup_hits_total[{RI}])) / sum(rate(reflex_actions_total[{RI}]))',
        "suppressed duplicates / all outcomes")], w=8, unit="percentunit",
        description="Duplicates caught by the idempotency claim (not executed). Duplicates the target executed despite the Idempotency-Key are not visible here."))
    p.append(panel(lay, "timeseries", "Time to remediation: event time → action done (M2/M4)", [
        (f'histogram_quantile(0.5, sum by (le) (rate(reflex_action_latency_seconds_bucket[{RI}])))', "p50"),
        (f'histogram_quantile(0.95, sum by (le) (rate(reflex_action_latency_seconds_bucket[{RI}])))', "p95"),
        (f'sum(rate(reflex_action_latency_seconds_sum[{RI}])) / sum(rate(reflex_action_latency_seconds_count[{RI}]))', "mean"),
    ], w=12, unit="s",
        description="From the causing event's ce_time to the actor's successful final attempt (reflex_action_latency_seconds). Seed targets: p95 < 5s (M2), mean < 5 min for critical remediation (M4)."))
    p.append(panel(lay, "timeseries", "Worst consumer lag (M2/M7)", [(
        'max by (group) (kafka_consumergroup_group_max_lag_seconds)', "{{group}}")], w=8, unit="s", thresholds=LAG_S))
    p.append(panel(lay, "bargauge", "Top automation-triggering rules (dashboard range)", [(
        'topk(10, sum by (rule) (increase(reflex_rule_matches_total[$__range])))', "{{rule}}")],
        w=24, h=8, unit="short", options={"orientation": "horizontal", "displayMode": "gradient",
                                           "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False}}))
    return dashboard("reflex-executive", "Reflex / Executive",
                     "Reliability and risk of the automation: success SLO, error budget, flow, safety rates.",
                     p, [], ["executive"])


def on_call():
    lay = Layout()
    g = 'group=~"$group"'
    p = []
    p.append(row(lay, "Is automation working?"))
    p.append(panel(lay, "stat", "Kill switch", [("max(reflex_kill_switch_on)", "kill switch")],
                   w=4, h=5, mappings=KILL_MAP, thresholds=ZERO_OK))
    p.append(panel(lay, "stat", "Success rate (5m)", [("reflex:actions_success_ratio:rate5m", "success")],
                   w=4, h=5, unit="percentunit", thresholds=PCT, decimals=2))
    p.append(panel(lay, "stat", "Burn rate 1h / 5m", [
        ("reflex:actions_error_ratio:rate1h / 0.01", "1h"),
        ("reflex:actions_error_ratio:rate5m / 0.01", "5m")], w=4, h=5, unit="suffix:x", thresholds=BURN, decimals=1))
    p.append(panel(lay, "stat", "Open breakers", [("count(max by (target) (reflex_breaker_state) == 2) or vector(0)", "open")],
                   w=4, h=5, thresholds=ZERO_OK))
    p.append(panel(lay, "stat", "Paused partitions", [("sum(reflex_paused_partitions) or vector(0)", "paused")],
                   w=4, h=5, thresholds=ZERO_OK))
    p.append(panel(lay, "stat", "Dead letters (1h)", [("sum(increase(reflex_dead_letters_total[1h])) or vector(0)", "dead letters")],
                   w=4, h=5, thresholds=ZERO_OK, decimals=0))
    p.append(panel(lay, "timeseries", "Failing actions by action / result", [(
        f'sum by (action, result) (rate(reflex_actions_total{{result=~"failed|rejected|held"}}[{RI}])) > 0',
        "{{action}} {{result}}")], unit="ops"))
    p.append(panel(lay, "timeseries", "Recent action outcomes by action / result", [(
        f'sum by (action, result) (rate(reflex_actions_total[{RI}]))', "{{action}} {{result}}")], unit="ops"))
    p.append(panel(lay, "state-timeline", "Circuit breaker state by target", [(
        'max by (target) (reflex_breaker_state)', "{{target}}")], w=12, mappings=BREAKER_MAP,
        thresholds=[{"color": "green", "value": None}, {"color": "orange", "value": 1}, {"color": "red", "value": 2}]))
    p.append(panel(lay, "timeseries", "Guardrails: rate limited and held", [
        (f'sum by (action) (rate(reflex_rate_limited_total[{RI}]))', "{{action}} rate limited"),
        (f'sum by (action) (rate(reflex_blast_radius_held_total[{RI}]))', "{{action}} held"),
    ], unit="ops"))
    p.append(row(lay, "Queue / lag and consumer health"))
    p.append(panel(lay, "timeseries", "Lag in seconds per group", [(
        f'max by (group) (kafka_consumergroup_group_max_lag_seconds{{{g}}})', "{{group}}")], unit="s", thresholds=LAG_S,
        description="Age of the oldest unconsumed record. Ticket > 30s for 15m, page > 120s for 5m."))
    p.append(panel(lay, "timeseries", "Lag in records per group (what KEDA scales on)", [(
        f'max by (group) (kafka_consumergroup_group_sum_lag{{{g}}})', "{{group}}")], unit="short"))
    status_expr = "max by (group) (" + " or ".join(
        f'reflex_consumergroup_status{{{g},status="{st}"}} * {n}' for n, st in enumerate(STATUSES)) + ")"
    p.append(panel(lay, "state-timeline", "Consumer group status (Burrow-style)", [(status_expr, "{{group}}")],
                   w=12, mappings=STATUS_MAP,
                   thresholds=[{"color": "green", "value": None}, {"color": "yellow", "value": 1},
                               {"color": "orange", "value": 2}, {"color": "red", "value": 3}],
                   description="OK; WARN: lag grew over the window; STALL: lag and no commit for lag_stall_after; "
                               "STOP: the same for lag_stop_after; ERR: a committed offset went backwards."))
    p.append(panel(lay, "table", "Groups not OK", [(
        f'max by (group, status) (reflex_consumergroup_status{{{g},status!="OK"}}) == 1', "")], w=12))
    p.append(panel(lay, "timeseries", "Dead letters by stage / class", [(
        f'sum by (stage, class) (rate(reflex_dead_letters_total[{RI}]))', "{{stage}} {{class}}")], unit="ops"))
    p.append(panel(lay, "timeseries", "Paused partitions by stage", [(
        'sum by (stage) (reflex_paused_partitions)', "{{stage}}")], unit="short",
        description="> 0 for 15m raises ReflexBackpressureSustained."))
    p.append(row(lay, "Non-blocking retries: parked keys and the reprocessor"))
    p.append(panel(lay, "timeseries", "Parked keys by stage", [
        ('sum by (stage) (reflex_parked_keys)', "{{stage}} keys parked"),
        (f'sum by (stage) (rate(reflex_parked_events_total[{RI}]))', "{{stage}} events parked /s"),
    ], unit="short",
        description="Keys whose later events wait behind an event awaiting redelivery (runtime.park_keys), and the rate "
                    "of events parked behind them. Needs reflex-reprocessor running; > 0 for 30m raises ReflexKeysParkedTooLong."))
    p.append(panel(lay, "timeseries", "Redeliveries, give-ups and skips by class (reprocessor)", [
        (f'sum by (class) (rate(reflex_redeliveries_total[{RI}]))', "{{class}} redelivered"),
        (f'sum by (class) (rate(reflex_redelivery_giveups_total[{RI}]))', "{{class}} given up (to .exhausted)"),
        (f'sum by (class) (rate(reflex_redelivery_skips_total[{RI}]))', "{{class}} left for a human"),
    ], unit="ops",
        description="Dead letters the reprocessor delivered back, gave up on after reprocessor.max_redeliveries "
                    "(moved to <topic>.exhausted: ReflexRedeliveriesGivingUp) and left on the .dlq topic for reflexctl dlq replay."))
    p.append(panel(lay, "timeseries", "Delayed partitions by stage", [(
        'sum by (stage) (reflex_delayed_partitions)', "{{stage}}")], w=24, h=6, unit="short",
        description="Partitions paused until a record's not-before time (the reprocessor waiting for redeliveries to be due). "
                    "Expected while retries are scheduled; unlike paused partitions this is not backpressure."))
    return dashboard("reflex-on-call", "Reflex / On-call",
                     "Triage: failing actions, guardrails, lag and consumer health, dead letters, backpressure, parked keys and redeliveries.",
                     p, [var_query("group", "Consumer group", "label_values(kafka_consumergroup_group_max_lag_seconds, group)")],
                     ["on-call"])


def debug():
    lay = Layout()
    g = 'group=~"$group"'
    s = 'stage=~"$stage"'
    p = []
    p.append(row(lay, "Stage processing"))
    for q in ("0.5", "0.95", "0.99"):
        p.append(panel(lay, "timeseries", f"Processing duration p{int(float(q) * 100)} by stage", [(
            f'histogram_quantile({q}, sum by (stage, le) (rate(reflex_processing_duration_seconds_bucket{{{s}}}[{RI}])))',
            "{{stage}}")], w=8, unit="s"))
    p.append(panel(lay, "timeseries", "Mean processing duration by stage", [(
        f'sum by (stage) (rate(reflex_processing_duration_seconds_sum{{{s}}}[{RI}])) / sum by (stage) (rate(reflex_processing_duration_seconds_count{{{s}}}[{RI}]))',
        "{{stage}}")], w=8, unit="s"))
    p.append(panel(lay, "timeseries", "In-flight events by stage", [(
        f'sum by (stage) (reflex_in_flight_events{{{s}}})', "{{stage}}")], w=8, unit="short",
        description="Taken, not yet acknowledged. Stale high values point at F6 (partial failure) or a waiting breaker/kill switch."))
    p.append(panel(lay, "timeseries", "Retries and backpressure pauses by stage", [
        (f'sum by (stage) (rate(reflex_retries_total{{{s}}}[{RI}]))', "{{stage}} retries"),
        (f'sum by (stage) (rate(reflex_backpressure_pauses_total{{{s}}}[{RI}]))', "{{stage}} pauses"),
    ], w=8, unit="ops"))
    p.append(panel(lay, "timeseries", "Parked keys and delayed partitions by stage", [
        (f'sum by (stage) (reflex_parked_keys{{{s}}})', "{{stage}} parked keys"),
        (f'sum by (stage) (reflex_delayed_partitions{{{s}}})', "{{stage}} delayed partitions"),
    ], w=8, unit="short",
        description="Per-key parking behind events awaiting redelivery, and partitions paused until a not-before time."))
    p.append(panel(lay, "timeseries", "Redeliveries and give-ups by class", [
        (f'sum by (class) (rate(reflex_redeliveries_total[{RI}]))', "{{class}} redelivered"),
        (f'sum by (class) (rate(reflex_redelivery_giveups_total[{RI}]))', "{{class}} given up"),
    ], w=8, unit="ops"))
    p.append(panel(lay, "timeseries", "Events parked behind a key by stage", [(
        f'sum by (stage) (rate(reflex_parked_events_total{{{s}}}[{RI}]))', "{{stage}}")], w=8, unit="ops"))
    p.append(panel(lay, "timeseries", "Events in / out / dropped by stage", [
        (f'sum by (stage) (rate(reflex_events_in_total{{{s}}}[{RI}]))', "{{stage}} in"),
        (f'sum by (stage) (rate(reflex_events_out_total{{{s}}}[{RI}]))', "{{stage}} out"),
        (f'sum by (stage) (rate(reflex_events_dropped_total{{{s}}}[{RI}]))', "{{stage}} dropped"),
    ], unit="ops"))
    p.append(panel(lay, "timeseries", "Rule matches by rule", [(
        f'sum by (rule) (rate(reflex_rule_matches_total[{RI}]))', "{{rule}}")], unit="ops"))
    p.append(panel(lay, "timeseries", "Enrichment lookups by lookup / result (hit, miss, error)", [(
        f'sum by (lookup, result) (rate(reflex_lookups_total[{RI}]))', "{{lookup}} {{result}}")], unit="ops"))
    p.append(panel(lay, "timeseries", "Lookup hit ratio", [(
        f'sum by (lookup) (rate(reflex_lookups_total{{result="hit"}}[{RI}])) / sum by (lookup) (rate(reflex_lookups_total[{RI}]))',
        "{{lookup}}")], unit="percentunit", max=1))
    p.append(row(lay, "Per-partition lag (M7) and throughput"))
    p.append(panel(lay, "timeseries", "Lag per partition (records)", [(
        f'max by (group, topic, partition) (kafka_consumergroup_group_lag{{{g}}})', "{{group}} {{topic}}/{{partition}}")],
        unit="short"))
    p.append(panel(lay, "timeseries", "Lag per partition (seconds, age of oldest unconsumed record)", [(
        f'max by (group, topic, partition) (kafka_consumergroup_group_lag_seconds{{{g}}})', "{{group}} {{topic}}/{{partition}}")],
        unit="s", thresholds=LAG_S))
    p.append(panel(lay, "timeseries", "Consume rate per partition (committed offset)", [(
        f'max by (group, topic, partition) (rate(kafka_consumergroup_group_offset{{{g}}}[{RI}]))',
        "{{group}} {{topic}}/{{partition}}")], unit="ops"))
    p.append(panel(lay, "timeseries", "Produce rate per partition (high watermark)", [(
        f'max by (topic, partition) (rate(kafka_partition_latest_offset[{RI}]))', "{{topic}}/{{partition}}")], unit="ops"))
    p.append(panel(lay, "timeseries", "Max lag per group (records and seconds)", [
        (f'max by (group) (kafka_consumergroup_group_max_lag{{{g}}})', "{{group}} records (worst partition)"),
        (f'max by (group) (kafka_consumergroup_group_max_lag_seconds{{{g}}})', "{{group}} seconds"),
    ], w=24, unit="short"))
    return dashboard("reflex-debug", "Reflex / Debug",
                     "Deep debugging: processing latency per stage, per-partition lag and throughput, retries and redeliveries, rules, lookups.",
                     p, [var_query("group", "Consumer group", "label_values(kafka_consumergroup_group_max_lag_seconds, group)"),
                         var_query("stage", "Stage", "label_values(reflex_events_in_total, stage)")],
                     ["debug"])


def main():
    for name, build in (("executive", executive), ("on-call", on_call), ("debug", debug)):
        path = os.path.join(HERE, f"{name}.json")
        with open(path, "w") as f:
            json.dump(build(), f, indent=2)
            f.write("\n")
        print(f"wrote {os.path.relpath(path)}")


if __name__ == "__main__":
    main()
