from nodes.resources import Resources

GiB = 1024**3


def test_shortfalls_name_each_short_resource_once_in_its_own_unit():
    wanted = Resources(cpu=64_000, gpu=2, memory=2 * GiB, storage=GiB)
    free = Resources(cpu=2_000, gpu=0, memory=GiB, storage=10 * GiB)
    assert wanted.shortfalls(free) == [
        "needs 64 CPU, 2 CPU free",
        "needs 2 GPU, 0 GPU free",
        "needs 2.0 GiB memory, 1.0 GiB free",
    ]
    assert Resources(cpu=500).shortfalls(free) == []
