"""The launcher: `jailkit run` confines a service in namespaces; one module per kernel concern.

Every concern has the same three parts, so that a reader knows where host-side work lives (the
side that must never follow a path the jail can change) and where the jail confines itself:

concern    what it plans (plan.py)        host side (launcher.py)        jail side (contain.py)
ids        userns.Needed, .plan,          userns.clone_owned_by, .write  userns.write_nested,
           allocate.for_jail                                             .forbid_nested
mounts     mounts.plan (typed steps)      mounts.detached_sources        mounts.apply, .pivot
cgroups    cgroup.plan                    cgroup.prime, .create, .attach, .remove (the waiter)
network    net.clone_flags, net.Veth,     net.create_veth                net.setup_inside
           net.privileged_binds
stdio      stdio.Stdio                    Stdio.open (a pty relay)       Stdio.attach,
                                                                          .own_session
landlock   landlock.Ruleset               -                              landlock.restrict
caps       caps.mask                      -                              caps.drop_bounding,
                                                                          .switch_user
rlimits    spec.rlimits                   -                              rlimits.apply
seccomp    spec.seccomp_allow             -                              seccomp.install (last)

The order of the jail side is contain.confine (pid 1) then contain.confine_service.
"""
