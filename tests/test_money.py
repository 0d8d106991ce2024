import math

import pytest

from leanformer import money


def test_shipped_prices_load_and_name_their_source():
    prices = money.load_prices()
    assert {"AWS c7i.large", "AWS c7a.large", "GCP e2-standard-2", "AWS g4dn.xlarge",
            "AWS g6.xlarge"} <= set(prices)
    for p in prices.values():
        assert p.usd_per_hour > 0 and p.source.startswith("https://") and p.read_on
    assert prices["AWS g4dn.xlarge"].kind == "gpu" and prices["AWS c7i.large"].kind == "cpu"


def test_a_bad_price_file_says_which_line_and_what_was_expected(tmp_path):
    bad = tmp_path / "prices.csv"
    bad.write_text("instance,provider\nX,Y\n")
    with pytest.raises(ValueError, match="needs the columns .*usd_per_hour"):
        money.load_prices(bad)
    header = "instance,provider,processor,kind,vcpus,usd_per_hour,read_on,source\n"
    bad.write_text(header + "X,Y,Z,cpu,2,cheap,2026-12,https://x\n")
    with pytest.raises(ValueError, match="line 2: usd_per_hour must be a number"):
        money.load_prices(bad)
    bad.write_text(header + "X,Y,Z,tpu,2,0.1,2026-12,https://x\n")
    with pytest.raises(ValueError, match="kind of 'cpu' or 'gpu'"):
        money.load_prices(bad)


def test_machines_map_to_the_instance_with_their_processor():
    prices = money.load_prices()
    intel = "Intel(R) Xeon(R) Processor (avx512_bf16, amx_bf16, amx_int8), 2 cores"
    assert money.closest_instance(intel, prices).instance == "AWS c7i.large"
    assert money.closest_instance("AMD EPYC (avx512_bf16), 2 cores", prices).instance == "AWS c7a.large"
    assert money.closest_instance("aarch64, 4 cores", prices).instance == "AWS c7g.large"
    assert money.closest_instance("unknown", prices).instance == "GCP e2-standard-2"


def test_dollars_per_million_and_break_even_follow_their_formulas():
    # 1,000 images a second for an hour is 3.6 million images for one hour's price
    assert money.usd_per_million(0.36, 1000) == pytest.approx(0.1)
    assert money.usd_for_seconds(0.36, 1800) == pytest.approx(0.18)
    assert money.break_even_images(1.0, 3e-6, 1e-6) == pytest.approx(500_000)
    assert money.break_even_images(1.0, 1e-6, 1e-6) == math.inf  # saves nothing
    with pytest.raises(ValueError, match="above zero"):
        money.usd_per_million(0.1, 0)


def test_pareto_front_keeps_only_points_nothing_beats():
    costs = [1.0, 2.0, 3.0, 2.5, 0.5]
    accs = [0.80, 0.85, 0.84, 0.90, 0.70]
    # 3.0/0.84 is beaten by 2.0/0.85; the rest trade cost for accuracy
    assert money.pareto_front(costs, accs) == [4, 0, 1, 3]
    with pytest.raises(ValueError, match="one cost per accuracy"):
        money.pareto_front([1.0], [0.5, 0.6])
