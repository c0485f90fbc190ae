"""AnonymizerService: trains the DP conditional diffusion generator and anonymizes faces with it. Validates,
prices, charges the privacy ledger and converts; the work is in umbra.diffusion and umbra.anonymization.
Internal: the caller holds the service credential and names the tenant in x-umbra-tenant.

The ledger (`<data dir>/ledger.sqlite3`) records every charge per tenant dataset: ε_g when a generator is
trained, one image's cost per preview call and per dataset anonymization. A request whose charge would pass
the budget it carries is refused before any work (FAILED_PRECONDITION PRIVACY_BUDGET_EXHAUSTED)."""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
import time
from importlib.metadata import version as package_version

import numpy as np
import torch

from umbra.anonymization import anonymize as anon
from umbra.anonymization import dataset as anonymized_dataset
from umbra.anonymizer.v1 import anonymizer_service_pb2 as an
from umbra.anonymizer.v1 import anonymizer_service_pb2_grpc
from umbra.classifiers import loop
from umbra.classifiers.data import decode
from umbra.classifiers.registry import ModelRegistry
from umbra.common.v1 import image_pb2, privacy_pb2, refs_pb2
from umbra.privacy.ledger import PrivacyLedger
from umbra.privacy.mechanisms import Cost
from umbra.runtime import auth
from umbra.runtime.auth import ServiceAuthenticator
from umbra.runtime.errors import FailedPrecondition, InvalidInput
from umbra.runtime.operations import OperationRunner
from umbra.runtime.server import Built, Runtime, ServiceSpec, registration
from umbra.services.references import dataset_id, dataset_reader, model_ref
from umbra.storage import keys, open_store
from umbra.storage.base import ObjectStore
from umbra.storage.datasets import DatasetReader
from umbra.storage.derived import png

log = logging.getLogger(__name__)
TRAIN, ANONYMIZE_DATASET = "TrainGenerator", "AnonymizeDataset"
PREVIEW_LIMIT = 16
GENERATOR_SIZES = (16, 32, 64)
_MECHANISMS = {"dp_sgd": privacy_pb2.PRIVACY_MECHANISM_DP_SGD, "gaussian": privacy_pb2.PRIVACY_MECHANISM_GAUSSIAN,
               "laplace": privacy_pb2.PRIVACY_MECHANISM_LAPLACE,
               "randomized_response": privacy_pb2.PRIVACY_MECHANISM_RANDOMIZED_RESPONSE,
               "composition": privacy_pb2.PRIVACY_MECHANISM_COMPOSITION}
_ACCOUNTANTS = {"dp_sgd": privacy_pb2.PRIVACY_ACCOUNTANT_PRV, "gaussian": privacy_pb2.PRIVACY_ACCOUNTANT_GDP,
                "laplace": privacy_pb2.PRIVACY_ACCOUNTANT_ANALYTIC,
                "randomized_response": privacy_pb2.PRIVACY_ACCOUNTANT_ANALYTIC,
                "composition": privacy_pb2.PRIVACY_ACCOUNTANT_BASIC_COMPOSITION}


def _tenant() -> str:
    return auth.require_tenant("the anonymizer acts for a tenant: name it in x-umbra-tenant")


def cost_to_proto(cost: Cost) -> privacy_pb2.PrivacyCost:
    accountant = _ACCOUNTANTS[cost.mechanism]
    if cost.mechanism == "dp_sgd" and cost.parameters.get("accountant_rdp"):
        accountant = privacy_pb2.PRIVACY_ACCOUNTANT_RDP
    return privacy_pb2.PrivacyCost(
        mechanism=_MECHANISMS[cost.mechanism], accountant=accountant, epsilon=cost.epsilon, delta=cost.delta,
        description=cost.description, parameters={k: float(v) for k, v in cost.parameters.items()},
        components=[cost_to_proto(c) for c in cost.components])


def _budget(budget: privacy_pb2.PrivacyBudget, field: str) -> Cost:
    """The request's budget; unset (0, 0) means no limit."""
    if budget.epsilon == 0 and budget.delta == 0:
        return Cost(math.inf, 1.0)
    if not (budget.epsilon > 0 and 0 <= budget.delta < 1):
        raise InvalidInput(field, "needs epsilon > 0 and delta in [0, 1) (leave both 0 for no limit)")
    return Cost(budget.epsilon, budget.delta)


@dataclasses.dataclass(frozen=True)
class _TrainPlan:
    bucket: str
    model: str
    reader: DatasetReader
    split: str
    attributes: tuple
    image_size: int
    hyper: object  # GeneratorHyper
    dp: loop.DPSettings | None
    start: anon.Generator | None
    samples: int


class AnonymizerServicer(anonymizer_service_pb2_grpc.AnonymizerServiceServicer):
    def __init__(self, store: ObjectStore, operations: OperationRunner, ledger: PrivacyLedger):
        self.store = store
        self.registry = ModelRegistry(store)
        self.operations = operations
        self.ledger = ledger

    # --- the generator ---------------------------------------------------------------------------------------

    def TrainGenerator(self, request, context):
        tenant = _tenant()
        plan = self._plan_training(tenant, request)  # every bad input refused here, before any compute
        self._charge_training(tenant, plan, request)
        op = self.operations.start(kind=TRAIN, tenant=tenant, metadata=an.TrainGeneratorMetadata(),
                                   work=lambda ctx: self._train(ctx, plan, request), request_id=request.request_id,
                                   resume_request=request)
        return an.TrainGeneratorResponse(operation=op)

    def resume_training(self, ctx, request_bytes: bytes) -> an.GeneratorResult:
        """After a restart: the same request again, from the run's last checkpoint (charged already)."""
        request = an.TrainGeneratorRequest.FromString(request_bytes)
        return self._train(ctx, self._plan_training(ctx.tenant, request), request)

    def _plan_training(self, tenant: str, request: an.TrainGeneratorRequest) -> _TrainPlan:
        from umbra.diffusion.attributes import schema_for
        from umbra.diffusion.generator import GeneratorConfig
        from umbra.diffusion.training import GeneratorHyper

        bucket = keys.bucket(tenant)
        if not request.model.startswith("models/"):
            raise InvalidInput("model", "must look like 'models/{model}'")
        model = keys.validate_resource_id(request.model.removeprefix("models/"), "model")
        reader = dataset_reader(self.store, bucket, request.dataset, "dataset")
        split = request.dataset.split or "train"
        selected = [s for s in reader.samples() if s.split == split]
        if not selected:
            raise InvalidInput("dataset.split", f"split {split!r} has no samples")
        names = list(request.condition_attributes)
        columns = {c: [s.labels[c] for s in selected if c in s.labels] for c in reader.header.label_columns}
        attributes = schema_for(columns, names)
        samples = sum(1 for s in selected if all(n in s.labels for n in names))
        if samples == 0:
            raise InvalidInput("condition_attributes", f"no sample of split {split!r} has a value for every one of "
                                                       f"{', '.join(names)}")
        size = request.image_size or min(32, reader.header.image_size)
        if size not in GENERATOR_SIZES:
            raise InvalidInput("image_size", f"is {size}: must be one of {', '.join(map(str, GENERATOR_SIZES))}")
        if size > reader.header.image_size:
            raise InvalidInput("image_size", f"is {size} px; the dataset's images are {reader.header.image_size} px")
        privacy = request.privacy
        hyper = GeneratorHyper(epochs=request.epochs or 10, batch_size=request.batch_size or 64,
                               learning_rate=request.learning_rate or 1e-3,
                               noise_multiplicity=privacy.noise_multiplicity or 1).validate(samples)
        dp = None
        if privacy.target_epsilon < 0 or not math.isfinite(privacy.target_epsilon):
            raise InvalidInput("privacy.target_epsilon", "must be a finite number; 0 trains without DP")
        if privacy.target_epsilon > 0:
            dp = loop.DPSettings(target_delta=privacy.target_delta, target_epsilon=privacy.target_epsilon,
                                 max_grad_norm=privacy.max_grad_norm or 1.0)
            if not 0 < dp.target_delta < 1 / samples:
                raise InvalidInput("privacy.target_delta", f"must be in (0, 1/n) = (0, {1 / samples:.3g}) for the "
                                                           f"{samples} training images")
            if not (math.isfinite(dp.max_grad_norm) and dp.max_grad_norm > 0):
                raise InvalidInput("privacy.max_grad_norm", "must be a positive number")
        start = None
        if request.HasField("initialize_from"):
            start = self._generator(bucket, request.initialize_from, "initialize_from")
            if start.config.image_size != size:
                raise InvalidInput("initialize_from", f"{start.name} is for {start.config.image_size} px images, "
                                                      f"this run for {size} px")
            fresh = GeneratorConfig(image_size=size, attributes=attributes)
            shape = ("channels", "layers_per_block", "attention", "norm_groups", "prediction", "train_timesteps")
            if any(getattr(start.config, k) != getattr(fresh, k) for k in shape):
                raise InvalidInput("initialize_from", f"{start.name} has another network or schedule than this "
                                                      f"version's generators")
            if start.trained_on == reader.dataset:
                raise InvalidInput("initialize_from", f"{start.name} was trained on {request.dataset.dataset} "
                                                      f"itself: start from a generator trained on public data")
        return _TrainPlan(bucket, model, reader, split, attributes, size, hyper, dp, start, samples)

    def _charge_training(self, tenant: str, plan: _TrainPlan, request: an.TrainGeneratorRequest) -> None:
        budget = _budget(request.budget, "budget")
        dataset = dataset_id(request.dataset.dataset, "dataset.dataset")
        if plan.dp is None:
            if math.isfinite(budget.epsilon):
                raise FailedPrecondition("a generator trained without DP has no finite ε; it cannot be trained "
                                         "within a privacy budget (set privacy.target_epsilon)",
                                         reason="PRIVACY_BUDGET_EXHAUSTED")
            return
        cost = Cost(plan.dp.target_epsilon, plan.dp.target_delta, "dp_sgd", "generator training")
        self.ledger.charge(tenant, dataset, cost, budget=budget, spent_by=request.request_id or _fingerprint(request))

    def _train(self, ctx, plan: _TrainPlan, request: an.TrainGeneratorRequest) -> an.GeneratorResult:
        from umbra.diffusion.generator import ConditionalUNet, GeneratorConfig, load_matching
        from umbra.diffusion.training import train

        ctx.report(stage="loading images")
        images, labels = _load(plan)
        ctx.check_cancelled()
        config = GeneratorConfig(image_size=plan.image_size, attributes=plan.attributes)
        torch.manual_seed(request.seed)
        net = ConditionalUNet(config)
        fresh = None
        if plan.start is not None:
            fresh = load_matching(net, self.registry.weights(plan.bucket, plan.start.model, plan.start.version),
                                  plan.start.config)
        run = ctx.name.removeprefix("operations/")
        saved = self.registry.latest_checkpoint(plan.bucket, plan.model, run)
        resume = loop.Checkpoint(**saved) if saved else None
        rate = loop.poisson_rate(len(images), plan.hyper.batch_size)

        def on_epoch(report: loop.EpochReport, checkpoint: loop.Checkpoint) -> None:
            self.registry.save_checkpoint(plan.bucket, plan.model, run, report.epoch, dataclasses.asdict(checkpoint))
            ctx.metadata.epoch, ctx.metadata.loss = report.epoch, report.loss
            spent = None
            if plan.dp is not None:
                spent = cost_to_proto(_dp_cost(report.epsilon, plan.dp.target_delta, report.accountant,
                                               checkpoint.noise_multiplier, rate, report.steps))
            ctx.report(stage="training", done=report.epoch, total=report.epochs, unit="epochs",
                       message=f"loss {report.loss:.4f}" + (f", epsilon {report.epsilon:.3f}" if plan.dp else ""),
                       privacy_spent=spent)

        started = time.monotonic()
        result = train(net, images, labels, plan.hyper, plan.dp, request.seed, on_epoch=on_epoch, resume=resume,
                       should_stop=lambda: ctx.cancelled)
        ctx.check_cancelled()
        privacy = {"dp": plan.dp is not None}
        if plan.dp is not None:
            privacy |= {"epsilon": result.epsilon, "delta": result.delta, "accountant": result.accountant,
                        "noise_multiplier": result.noise_multiplier, "sample_rate": rate, "steps": result.steps,
                        "max_grad_norm": plan.dp.max_grad_norm,
                        "noise_multiplicity": plan.hyper.noise_multiplicity}
        record = {
            "kind": "generator",
            "dataset": {"dataset": request.dataset.dataset, "version": request.dataset.version, "split": plan.split},
            "condition_attributes": [a.name for a in plan.attributes], "seed": request.seed, "steps": result.steps,
            "train_loss": result.final_loss, "train_seconds": time.monotonic() - started,
            "hyperparameters": dataclasses.asdict(plan.hyper), "images": len(images), "privacy": privacy,
            "initialized_from": None if plan.start is None else {
                "model": f"models/{plan.start.model}", "version": plan.start.version,
                "dataset": plan.start.record.get("dataset"), "privacy": plan.start.record.get("privacy"),
                "fresh_attributes": fresh},
            "code_version": package_version("umbra"),
        }
        ctx.report(stage="writing the generator")
        version = self.registry.write(plan.bucket, plan.model, config, net.state_dict(), record)
        generator = self._generator(plan.bucket, refs_pb2.ModelRef(model=f"models/{plan.model}", version=version),
                                    "generator")
        log.info("generator %s written (epsilon %s)", generator.name, privacy.get("epsilon", "inf, no DP"))
        return an.GeneratorResult(generator=refs_pb2.ModelRef(model=f"models/{plan.model}", version=version),
                                  privacy_cost=cost_to_proto(generator.cost()))

    def _generator(self, bucket: str, ref, field: str) -> anon.Generator:
        model, version = model_ref(ref, field)
        stored = self.registry.get(bucket, model, version, kind="generator", field=field)  # NOT_FOUND for others'
        return anon.Generator(model, version, stored.config, stored.record)

    def _net(self, generator: anon.Generator, bucket: str):
        from umbra.diffusion.generator import ConditionalUNet

        net = ConditionalUNet(generator.config)
        net.load_state_dict(self.registry.weights(bucket, generator.model, generator.version))
        return net.eval()

    # --- anonymizing -----------------------------------------------------------------------------------------

    def _check(self, bucket: str, settings: an.AnonymizationSettings, reader: DatasetReader,
               dataset: str) -> anon.Request:
        generator = self._generator(bucket, settings.generator, "settings.generator")
        return anon.check(generator, dataset_id=dataset, label_columns=reader.header.label_columns,
                          image_size=reader.header.image_size,
                          protected=list(settings.protected_attributes), kept=list(settings.kept_attributes),
                          intensity=settings.intensity, steps=settings.steps, seed=settings.seed)

    def EstimatePrivacyCost(self, request, context):
        """One image's cost, which is also a dataset's (each image is a different person's, so their costs do
        not add up: parallel composition); priced for the generator's own training dataset, so ε_g is in it."""
        tenant = _tenant()
        if request.image_count < 0:
            raise InvalidInput("image_count", "must be at least 0")
        settings = request.settings
        generator = self._generator(keys.bucket(tenant), settings.generator, "settings.generator")
        checked = anon.check(generator, dataset_id=generator.trained_on, label_columns=list(generator.config.classes),
                             image_size=generator.config.image_size, protected=list(settings.protected_attributes),
                             kept=list(settings.kept_attributes), intensity=settings.intensity, steps=settings.steps,
                             seed=settings.seed)
        return an.EstimatePrivacyCostResponse(privacy_cost=cost_to_proto(checked.cost.per_image))

    def Anonymize(self, request, context):
        tenant = _tenant()
        bucket = keys.bucket(tenant)
        reader = dataset_reader(self.store, bucket, request.dataset, "dataset")
        checked = self._check(bucket, request.settings, reader, reader.dataset)
        if not request.sample_keys:
            raise InvalidInput("sample_keys", "name at least one sample to preview")
        if len(request.sample_keys) > PREVIEW_LIMIT:
            raise InvalidInput("sample_keys", f"has {len(request.sample_keys)} keys; at most {PREVIEW_LIMIT} per "
                                              f"preview (use AnonymizeDataset for more)")
        if len(set(request.sample_keys)) != len(request.sample_keys):
            raise InvalidInput("sample_keys", "names a sample twice")
        wanted = list(request.sample_keys)
        samples = {s.key: s for s in reader.samples() if s.key in set(wanted)}
        missing = [k for k in wanted if k not in samples]
        if missing:
            raise InvalidInput("sample_keys", f"{', '.join(missing[:5])} not in {request.dataset.dataset}/versions/"
                                              f"{request.dataset.version}")
        for key in wanted:
            for attribute in (*checked.protected, *checked.kept):
                if attribute.name not in samples[key].labels:
                    raise InvalidInput("sample_keys", f"{key} has no {attribute.name} label")
                attribute.index(samples[key].labels[attribute.name])
        budget = _budget(request.settings.budget, "settings.budget")
        self.ledger.charge(tenant, reader.dataset, dataclasses.replace(checked.cost.charged,
                                                                       description="anonymization preview"),
                           budget=budget, spent_by=request.request_id or _fingerprint(request))
        size = reader.header.image_size
        images = torch.empty((len(wanted), 3, size, size), dtype=torch.uint8)
        pixels, order = images.numpy(), {k: i for i, k in enumerate(wanted)}
        for sample, data in reader.iter_images():
            if sample.key in order:
                pixels[order[sample.key]] = decode(data, size)
        seed = request.settings.seed
        out, released = anon.anonymize(
            self._net(checked.generator, bucket), checked, images, [samples[k].labels for k in wanted],
            [np.random.default_rng([seed, i]) for i in range(len(wanted))], torch.Generator().manual_seed(seed))
        per_image = cost_to_proto(checked.cost.per_image)
        response = an.AnonymizeResponse(privacy_cost=per_image)
        for i, key in enumerate(wanted):
            item = response.images.add(privacy_cost=per_image)
            item.image.CopyFrom(image_pb2.Image(data=png(out[i].permute(1, 2, 0).numpy()), media_type="image/png",
                                                width=out.shape[-1], height=out.shape[-2], sample_key=key))
            for attribute in checked.protected:
                value = released[i][attribute.name]
                if attribute.numeric:
                    item.released_attributes.add(attribute=attribute.name, number=float(value))
                else:
                    item.released_attributes.add(attribute=attribute.name, category=value)
        return response

    def AnonymizeDataset(self, request, context):
        tenant = _tenant()
        job = self._plan_dataset(tenant, request)
        budget = _budget(request.settings.budget, "settings.budget")
        self.ledger.charge(tenant, job.reader.dataset, dataclasses.replace(job.request.cost.charged,
                                                                           description="dataset anonymization"),
                           budget=budget, spent_by=request.request_id or _fingerprint(request))
        op = self.operations.start(kind=ANONYMIZE_DATASET, tenant=tenant, metadata=an.AnonymizeDatasetMetadata(),
                                   work=lambda ctx: self._anonymize_dataset(ctx, job),
                                   request_id=request.request_id, resume_request=request)
        return an.AnonymizeDatasetResponse(operation=op)

    def resume_dataset(self, ctx, request_bytes: bytes) -> an.AnonymizationResult:
        request = an.AnonymizeDatasetRequest.FromString(request_bytes)
        return self._anonymize_dataset(ctx, self._plan_dataset(ctx.tenant, request))

    def _plan_dataset(self, tenant: str, request: an.AnonymizeDatasetRequest) -> anonymized_dataset.Job:
        bucket = keys.bucket(tenant)
        reader = dataset_reader(self.store, bucket, request.dataset, "dataset")
        checked = self._check(bucket, request.settings, reader, reader.dataset)
        if request.shards:
            raise InvalidInput("shards", "splitting a dataset across replicas is not supported yet: leave it empty")
        output = dataset_id(request.output_dataset or request.dataset.dataset, "output_dataset")
        if request.output_version < 1:
            raise InvalidInput("output_version", "is required: the version the coordinator reserved for the output")
        return anonymized_dataset.plan(self.store, bucket, reader, checked, output=(output, request.output_version),
                                       fingerprint=_fingerprint(request, ignore=("request_id",)))

    def _anonymize_dataset(self, ctx, job: anonymized_dataset.Job) -> an.AnonymizationResult:
        ctx.report(stage="loading the generator")
        net = self._net(job.request.generator, job.out.bucket)

        def progress(done: int, total: int, shards: int) -> None:
            ctx.metadata.shards_done = shards
            ctx.report(stage="anonymizing", done=done, total=total, unit="images", message=f"{shards} shards written")

        result = anonymized_dataset.run(job, net, progress=progress, cancelled=lambda: ctx.cancelled)
        dataset, number = job.out.output
        cost = job.request.cost
        dataset_cost = Cost(cost.per_image.epsilon, cost.per_image.delta, "composition",
                            "each person in the dataset (one image per person)", components=cost.per_image.components)
        return an.AnonymizationResult(
            anonymized=refs_pb2.DatasetRef(dataset=f"datasets/{dataset}", version=number),
            privacy_cost=cost_to_proto(dataset_cost), image_count=result.samples, left_out=result.left_out,
            record=refs_pb2.ObjectRef(bucket=job.out.bucket, key=result.record_key))


def _dp_cost(epsilon: float, delta: float, accountant: str, sigma: float, rate: float, steps: int) -> Cost:
    return Cost(epsilon, delta, "dp_sgd", "generator training",
                {"noise_multiplier": sigma, "sample_rate": rate, "steps": float(steps),
                 "accountant_rdp": float(accountant == "rdp")})


def _fingerprint(request, ignore: tuple[str, ...] = ()) -> str:
    """A request's identity when it has no request_id: the same request is charged once."""
    copy = type(request)()
    copy.CopyFrom(request)
    for name in ignore:
        copy.ClearField(name)
    return hashlib.sha256(copy.SerializeToString(deterministic=True)).hexdigest()


def _load(plan: _TrainPlan) -> tuple[torch.Tensor, torch.Tensor]:
    names = [a.name for a in plan.attributes]
    images, labels = [], []
    for sample, data in plan.reader.iter_images(split=plan.split):
        if all(n in sample.labels for n in names):
            images.append(decode(data, plan.image_size))
            labels.append([a.index(sample.labels[a.name]) for a in plan.attributes])
    return torch.from_numpy(np.stack(images)), torch.tensor(labels, dtype=torch.int64)


def build(runtime: Runtime) -> Built:
    ledger = PrivacyLedger(runtime.config.data_dir / "ledger.sqlite3")
    servicer = AnonymizerServicer(open_store(runtime.config.store), runtime.operations, ledger)
    runtime.operations.register_resumer(TRAIN, servicer.resume_training)
    runtime.operations.register_resumer(ANONYMIZE_DATASET, servicer.resume_dataset)
    return Built(
        registrations=[registration(an, anonymizer_service_pb2_grpc, "AnonymizerService", servicer)],
        authenticator=ServiceAuthenticator(runtime.config.service_token),
    )


SPEC = ServiceSpec(name="anonymizer", build=build)
