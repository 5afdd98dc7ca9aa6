"""epfiot watch: keep the host matching the manifests of some directories, for as long as it runs.

Level-based, like controller-runtime and kopf: every trigger runs one full reconcile (load the manifests,
then epfiot.reconcile.run_once, as `epfiot apply` does), never a patch derived from the trigger itself.
The triggers:

- a manifest change under a watched path (watchfiles), once the files have been quiet for --debounce s;
- a libvirt lifecycle event on a domain that watch manages (a VM stopped by hand is running again within
  seconds); the event only says "look again";
- the periodic resync (--resync s), which also catches what no event reports;
- a reconnect to libvirt after the daemon restarted or went away (with exponential backoff, capped);
- a failed action's retry: each failed action is requeued on its own, by the kind of its error (temporary:
  soon; other: with a growing backoff; permanent: not until the action changes), and the moment a removal
  becomes stable enough to prune.

Triggers arriving during a reconcile coalesce into one more run. The libvirt work runs in one worker thread
(one connection, one registry handle); the asyncio loop hosts watchfiles, the timers, the signal handlers
and the LwM2M bootstrap server.

Git-safety. Invalid manifests (a half-written file, a YAML or schema error) are logged with file:line and
change nothing: the last valid desired state stays in force and drift keeps being corrected against it.
Pruning follows the removal rule of `RemovalGate` (docs/watch.md): a reconcile prunes only when nothing the
manifests declared has disappeared within the last --prune-after seconds (nor in the first --prune-after
seconds after start). A stack whose file was removed keeps its (owner, stack) scope in the plans, so its
resources do get pruned; the scopes seen under the watched paths are kept in the state directory
(watch-scopes.json), so that this still happens when the file was removed while watch was not running.

The modules: schedule (Schedule, Backoff, Requeue, RemovalGate: pure), scopes (ScopeMemory), config
(WatchConfig), reconciler (one run, in the worker thread) and daemon (the asyncio side, run_watch).
"""
