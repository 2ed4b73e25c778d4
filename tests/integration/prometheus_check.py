"""Parses a /metrics page with prometheus_client's own text parser and checks vhost's vLLM-style
families: histograms well formed (cumulative buckets, +Inf = _count), counters and gauges per
model_name, and, given MODEL and a least request count, that they counted real traffic.
    prometheus_check.py METRICS_FILE [MODEL MIN_REQUESTS]"""
import sys

from prometheus_client.parser import text_string_to_metric_families

text = open(sys.argv[1]).read()
families = {f.name: f for f in text_string_to_metric_families(text)}  # raises on malformed text
model = sys.argv[2] if len(sys.argv) > 2 else None
least = int(sys.argv[3]) if len(sys.argv) > 3 else 0
want = {"vhost:time_to_first_token_seconds": "histogram", "vhost:time_per_output_token_seconds": "histogram",
        "vhost:e2e_request_latency_seconds": "histogram", "vhost:request_queue_time_seconds": "histogram",
        "vhost:prompt_tokens": "counter", "vhost:generation_tokens": "counter", "vhost:request_success": "counter",
        "vhost:num_requests_running": "gauge", "vhost:num_requests_waiting": "gauge", "vhost:kv_cache_usage_perc": "gauge"}
for name, kind in want.items():
    assert name in families, (name, sorted(families))
    assert families[name].type == kind, (name, families[name].type)
for name, f in families.items():
    if f.type != "histogram":
        continue
    by = {}
    for s in f.samples:
        by.setdefault(s.labels.get("model_name"), []).append(s)
    for m, samples in by.items():
        buckets = [s for s in samples if s.name.endswith("_bucket")]
        counts = [s.value for s in buckets]
        assert counts == sorted(counts), (name, m, counts)  # cumulative
        inf = [s.value for s in buckets if s.labels["le"] == "+Inf"]
        count = [s.value for s in samples if s.name.endswith("_count")]
        assert inf == count, (name, m, inf, count)
if model:
    e2e = [s.value for s in families["vhost:e2e_request_latency_seconds"].samples
           if s.name.endswith("_count") and s.labels["model_name"] == model]
    assert e2e and e2e[0] >= least, (model, e2e, least)
    ttft = [s.value for s in families["vhost:time_to_first_token_seconds"].samples
            if s.name.endswith("_count") and s.labels["model_name"] == model]
    assert ttft and ttft[0] >= 1, ttft
    gen = [s.value for s in families["vhost:generation_tokens"].samples if s.labels["model_name"] == model]
    assert gen and gen[0] > 0, gen
    reasons = {s.labels["finished_reason"] for s in families["vhost:request_success"].samples if s.labels["model_name"] == model}
    assert reasons and reasons <= {"stop", "length", "abort"}, reasons
print(f"prometheus_client parsed {len(families)} families; vLLM-style histograms, counters and gauges well formed")
