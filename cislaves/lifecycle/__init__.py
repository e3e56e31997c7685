"""Image lifecycle: cron-driven rebakes of a target matrix, validation, publishing into segredos' YAML,
retention and notifications (issue 13).

matrix     `fab rebake`: the lock, the parallel bakes, the summary, the JSON report, the log file
validate   a fresh instance of a new image must pass the distribution's checks
publish    new ids into the YAML (only the id lines change), a git branch and commit
retention  `fab prune`, `fab delete_image`
packages   the installed package list of each image, `fab image_diff`
notify     SMTP email and a webhook
settings   the `rebake:` section
"""
