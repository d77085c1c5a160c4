from pipelines.index_job import IndexSettings, StageResources, plan_actors


def test_actor_pools_are_sized_to_what_the_cluster_can_place():
    cpu_only = IndexSettings(sam=StageResources(max_actors=8, num_cpus=1.0),
                             clip=StageResources(max_actors=4, num_cpus=0.5))
    assert plan_actors({"CPU": 2.0}, cpu_only) == (1, 1)  # 0.5 read + 0.5 clip + 1 sam
    assert plan_actors({"CPU": 4.0}, cpu_only) == (3, 1)
    assert plan_actors({"CPU": 64.0}, cpu_only) == (8, 4)
    assert plan_actors({"CPU": 1.0}, cpu_only) == (1, 1), "never below one actor per stage"

    gpus = IndexSettings(sam=StageResources(max_actors=8, num_cpus=1.0, num_gpus=1.0),
                         clip=StageResources(max_actors=8, num_cpus=1.0, num_gpus=0.5))
    assert plan_actors({"CPU": 32.0, "GPU": 4.0}, gpus) == (3, 2)  # 3 x 1 + 2 x 0.5 = 4 GPUs
    assert plan_actors({"CPU": 32.0, "GPU": 8.0}, gpus) == (7, 2)  # 7 x 1 + 2 x 0.5 = 8 GPUs
