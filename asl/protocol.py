"""The contract between a trial process (a training) and whoever launched it: the search's
executors, the re-training and comparison tools.

Everything here is plain data, with no dependency, so that both sides import it:

* what the launcher puts in the trial's environment (:data:`TRIAL_ID_ENV`,
  :data:`LAUNCH_TIME_ENV`);
* the files the trial writes in its work directory: :data:`RESULT_FILE` (the last
  validation, written by :class:`asl.mmseg.hooks.ASLTrialHook`; fields in
  :data:`RESULT_FIELDS`), :data:`FAILURE_FILE` (written instead when a loss is not
  finite) and :data:`STDOUT_LOG` (the process's output, written by the executor);
* the exit statuses a trial's process uses (:data:`EXIT_NONFINITE`, :data:`EXIT_STOPPED`;
  otherwise 0 for success, 1 for an exception, 2 for bad arguments, ``-N`` for signal N);
* with early stopping, :data:`PROBES_FILE` and :data:`STOPPED_FILE`;
* with successive halving, :data:`PAUSED_FILE` and :data:`RUNG_CHECKPOINT`.

A new field of the contract is added here once and read from here by every side.
"""
__all__ = [
    'TRIAL_ID_ENV', 'LAUNCH_TIME_ENV', 'RESULT_FILE', 'FAILURE_FILE', 'STDOUT_LOG',
    'RESULT_FIELDS', 'FAILURE_FIELDS', 'EXIT_NONFINITE', 'PROBES_FILE', 'STOPPED_FILE',
    'EXIT_STOPPED', 'PAUSED_FILE', 'RUNG_CHECKPOINT'
]

#: The trial's id (``s<step>-c<candidate>-a<attempt>``, ``re-c<n>-a<attempt>``), set by the
#: search's executors (the tests' fault-injection hook reads it).
TRIAL_ID_ENV = 'ASL_TRIAL_ID'

#: ``repr(time.time())`` when the launcher started the trial, so that the trial can report
#: its start-up time (read by ``ASLTrialHook``).
LAUNCH_TIME_ENV = 'ASL_TRIAL_LAUNCH_TIME'

#: The last validation's metrics and the trial's timings (JSON).
RESULT_FILE = 'result.json'

#: Why the trial stopped on a non-finite loss (JSON).
FAILURE_FILE = 'failure.json'

#: The trial process's standard output and error.
STDOUT_LOG = 'stdout.log'

#: The fields of :data:`RESULT_FILE`: ``metrics`` (name -> value in percent), ``iter`` and
#: ``max_iters`` (the iteration of the validation, the training's length), ``wall_s``
#: (launch to the end of the validation), ``train_iter_s``, ``val_s``, ``overhead_s``.
RESULT_FIELDS = ('metrics', 'iter', 'max_iters', 'wall_s', 'train_iter_s', 'val_s',
                 'overhead_s')

#: The fields of :data:`FAILURE_FILE`: ``reason``, ``kind`` (``'nonfinite'``), ``iter``,
#: ``key`` and ``value`` (the loss that was not finite).
FAILURE_FIELDS = ('reason', 'kind', 'iter', 'key', 'value')

#: Exit status of a training stopped on a non-finite loss.
EXIT_NONFINITE = 3

#: Intermediate hold-out scores of a trial with early stopping (``search.early_stop``):
#: one JSON line per probe, ``iter``, ``score`` (the reward key, as a fraction),
#: ``threshold`` (None: no rule at that point) and ``metrics``.
PROBES_FILE = 'probes.jsonl'

#: Written when a trial stopped itself early: ``iter``, ``score``, ``threshold``, ``reason``.
STOPPED_FILE = 'stopped.json'

#: Exit status of a training that stopped itself early (its probe fell below the rule).
EXIT_STOPPED = 4

#: Written when a trial of successive halving (``search.halving``) reached its rung:
#: ``iter``, ``score`` (the reward key, as a fraction), ``metrics``, ``checkpoint`` (the
#: absolute path of :data:`RUNG_CHECKPOINT`, complete before this file is written),
#: ``wall_s``, ``train_iter_s``, ``val_s``. The process then ends with status 0.
PAUSED_FILE = 'paused.json'

#: The checkpoint a trial saves at its rung (model, optimizer, schedule, iteration and the
#: random state), in its work directory; the next leg resumes it.
RUNG_CHECKPOINT = 'rung.pth'
