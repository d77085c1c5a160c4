from maskdex.pipelines.index.job import IndexSettings, StageResources, plan_actors, read_blocks, settings_for_cluster


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


def test_the_default_plan_fills_the_cluster_with_single_threaded_sam_actors():
    defaults = IndexSettings()
    assert defaults.sam.max_actors is None and defaults.clip.max_actors is None
    # 2 SAM 2 x 0.75 + 1 Alpha-CLIP x 0.25 + one read task x 0.25 = 2 CPUs
    assert plan_actors({"CPU": 2.0}, defaults) == (2, 1)
    assert plan_actors({"CPU": 16.0}, defaults) == (20, 3)
    on_gpus = IndexSettings(sam=StageResources(max_actors=None, num_cpus=0.75, num_gpus=1.0),
                            clip=StageResources(max_actors=None, num_cpus=0.25, num_gpus=1.0))
    assert plan_actors({"CPU": 64.0, "GPU": 8.0}, on_gpus) == (7, 1), "one GPU for Alpha-CLIP, the rest for SAM 2"
    assert plan_actors({"CPU": 64.0, "GPU": 1.0}, on_gpus) == (1, 1), "never below one actor per stage"


def test_no_stage_starts_more_actors_than_the_files_have_read_blocks():
    defaults = IndexSettings()
    assert [read_blocks(files, defaults) for files in (1, 4, 5, 40)] == [1, 1, 2, 10]
    assert plan_actors({"CPU": 16.0}, defaults, blocks=read_blocks(3, defaults)) == (1, 1)
    assert plan_actors({"CPU": 16.0}, defaults, blocks=read_blocks(10, defaults)) == (3, 3)
    assert plan_actors({"CPU": 16.0}, defaults, blocks=read_blocks(10_000, defaults)) == plan_actors({"CPU": 16.0}, defaults)
    assert plan_actors({"CPU": 16.0}, defaults, blocks=0) == (1, 1)


def test_device_auto_is_decided_by_the_cluster_and_reserves_the_gpus_it_uses():
    on_gpus = settings_for_cluster(IndexSettings(), {"CPU": 16.0, "GPU": 2.0})
    assert on_gpus.device == "cuda" and on_gpus.sam.num_gpus == 1.0 and on_gpus.clip.num_gpus == 1.0
    assert plan_actors({"CPU": 16.0, "GPU": 2.0}, on_gpus) == (1, 1)
    assert settings_for_cluster(IndexSettings(), {"CPU": 16.0}).device == "cpu"
    halves = IndexSettings(device="auto", sam=StageResources(num_gpus=0.5))
    assert settings_for_cluster(halves, {"CPU": 4.0, "GPU": 1.0}).sam.num_gpus == 0.5, "an explicit share is kept"
    assert settings_for_cluster(IndexSettings(device="cpu"), {"CPU": 4.0, "GPU": 1.0}).device == "cpu"
