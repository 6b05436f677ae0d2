"""Training: the trainers' arguments (:mod:`.arguments`); the trainers, the loop every queue-owning model
shares (:mod:`.queue_trainer`), SEED's (:mod:`.seed_trainer`) and MoCo-v2's (:mod:`.moco_trainer`); their
callbacks (:mod:`.callbacks`); the step's autotuned choices (:mod:`.step_choice`) and the student's timed
probe (:mod:`.student_probe`); precision (:mod:`.precision`); distributed set-up and shutdown
(:mod:`.distributed`); progress bars (:mod:`.progress`); and the run folder: the decision on it
(:mod:`.run_folder`), what a resume must match (:mod:`.run_recipe`), complete checkpoints
(:mod:`.checkpoints`) and its lock (:mod:`.run_lock`)."""
