"""ML models, their versions (artifacts kept in the database) and prediction tasks.

Artifacts are stored in the database (``BinaryField``), like every other piece of state:
a version trained on a node that later dies can still be served anywhere, and nothing
needs a shared filesystem. ``CNET_ML_MAX_ARTIFACT_BYTES`` caps their size.
"""

import uuid

from django.conf import settings
from django.db import models
from django.db.models import Q


class MLModel(models.Model):
    """A deployed model: the seed's deployment (command, args, env, resources) and its registry."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    name = models.CharField(max_length=255)
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL,
                              related_name="ml_models")
    model_type = models.CharField(max_length=64, default="custom")
    framework = models.CharField(max_length=64, default="scikit-learn")
    # Relative to working_dir on the node that trains it.
    model_path = models.CharField(max_length=4096)
    script_path = models.CharField(max_length=4096, blank=True)
    command = models.CharField(max_length=4096, blank=True)
    args = models.JSONField(default=list, blank=True)
    env = models.JSONField(default=dict, blank=True)
    working_dir = models.CharField(max_length=4096, default=".")
    cpu_millicores = models.PositiveIntegerField(default=1000)
    memory_bytes = models.PositiveBigIntegerField(default=512_000_000)
    disk_bytes = models.PositiveBigIntegerField(default=0)
    # Serve the new version as soon as a training run stores it.
    serve_after_training = models.BooleanField(default=False)
    serve_port = models.PositiveIntegerField(null=True, blank=True)
    promoted_version = models.ForeignKey("ModelVersion", null=True, blank=True, on_delete=models.SET_NULL,
                                         related_name="+")
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.CheckConstraint(condition=Q(cpu_millicores__gte=1), name="mlmodel_cpu_positive"),
            models.CheckConstraint(condition=Q(memory_bytes__gte=1), name="mlmodel_memory_positive"),
        ]
        indexes = [
            # GET /api/ml/models for one user, newest first.
            models.Index(fields=["owner", "-created_at"], name="mlmodel_owner_created"),
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.id})"


class VersionSource(models.TextChoices):
    TRAINING = "training", "Training run"
    UPLOAD = "upload", "Upload"


class ModelVersion(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    model = models.ForeignKey(MLModel, on_delete=models.CASCADE, related_name="versions")
    number = models.PositiveIntegerField()
    checksum = models.CharField(max_length=64, help_text="sha256 of the artifact, hex")
    size_bytes = models.PositiveBigIntegerField()
    framework = models.CharField(max_length=64)
    model_type = models.CharField(max_length=64)
    filename = models.CharField(max_length=255)
    metrics = models.JSONField(default=dict, blank=True)
    source = models.CharField(max_length=16, choices=VersionSource.choices)
    workload = models.ForeignKey("workloads.Workload", null=True, blank=True, on_delete=models.SET_NULL,
                                 related_name="+")
    # Deferred by every selector; read only to download or serve it.
    artifact = models.BinaryField()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["model", "-number"]
        constraints = [
            models.UniqueConstraint(fields=["model", "number"], name="model_version_number_once"),
            # A training run stores its artifact once, even if the agent reports twice.
            models.UniqueConstraint(fields=["workload"], condition=Q(workload__isnull=False),
                                    name="model_version_once_per_run"),
            models.CheckConstraint(condition=Q(number__gte=1), name="model_version_number_positive"),
        ]

    def __str__(self) -> str:
        return f"{self.model.name} v{self.number}"


class RunKind(models.TextChoices):
    TRAINING = "training", "Training"
    SERVING = "serving", "Serving"


class ModelRun(models.Model):
    """A workload that trains or serves a model (workloads knows nothing of models)."""

    model = models.ForeignKey(MLModel, on_delete=models.CASCADE, related_name="runs")
    workload = models.OneToOneField("workloads.Workload", on_delete=models.CASCADE, related_name="ml_run")
    kind = models.CharField(max_length=16, choices=RunKind.choices)
    version = models.ForeignKey(ModelVersion, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            # predict: "the running serving instances of model M"; list: "its latest training run".
            models.Index(fields=["model", "kind", "-created_at"], name="modelrun_model_kind"),
        ]

    def __str__(self) -> str:
        return f"{self.kind} of {self.model_id}: {self.workload_id}"


class TaskStatus(models.TextChoices):
    PENDING = "pending", "Pending"
    RUNNING = "running", "Running"
    SUCCEEDED = "succeeded", "Succeeded"
    FAILED = "failed", "Failed"


class PredictionTask(models.Model):
    """The seed's asynchronous prediction: created by predict, run on an agent that runs models."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    model = models.ForeignKey(MLModel, on_delete=models.CASCADE, related_name="prediction_tasks")
    version = models.ForeignKey(ModelVersion, null=True, on_delete=models.SET_NULL, related_name="+")
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")
    status = models.CharField(max_length=16, choices=TaskStatus.choices, default=TaskStatus.PENDING)
    input_data = models.JSONField()
    result = models.JSONField(null=True, blank=True)
    error = models.TextField(blank=True)
    # The HTTP status a synchronous predict would have answered (422: the model raised).
    error_status = models.PositiveSmallIntegerField(null=True, blank=True)
    log = models.TextField(blank=True)
    # The node whose agent took it last, and how many times one did: the sweep retries a run
    # whose agent died (node offline, or running past the deadline) until attempts run out.
    node = models.ForeignKey("nodes.Node", null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    attempts = models.PositiveSmallIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.CheckConstraint(condition=Q(status__in=TaskStatus.values), name="prediction_task_status_known"),
            # A running task has a start time: the sweep measures its deadline from it.
            models.CheckConstraint(condition=~Q(status=TaskStatus.RUNNING) | Q(started_at__isnull=False),
                                   name="prediction_task_running_started"),
        ]
        indexes = [
            # GET /api/tasks for one user, newest first.
            models.Index(fields=["owner", "-created_at"], name="predtask_owner_created"),
            # The sweep: pending tasks not sent yet, running ones past their deadline (few rows each).
            models.Index(fields=["created_at"], condition=Q(status=TaskStatus.PENDING), name="predtask_pending"),
            models.Index(fields=["started_at"], condition=Q(status=TaskStatus.RUNNING), name="predtask_running"),
        ]

    def __str__(self) -> str:
        return f"prediction {self.id} ({self.status})"
