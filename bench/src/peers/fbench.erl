%% The Erlang peer of foundation-bench (bench/src/peers/erlang.rs).
%%
%% Run as `erl -noshell [+S N:N] [+P Max] -pa Dir -run fbench main Cmd Args...`;
%% prints one `fbench <key> <value>` line per figure and repetition, then
%% halts. The Rust side takes the median per key.
%%
%%   spawn N Reps PageSize            spawn_ns, spawn_bytes, spawn_rss_bytes
%%   local Msgs Rounds Senders Reps   send, ping_pong_p50/p99/mean, fan_in
%%   restart Restarts Batch Reps      restart_p50/p99/mean
%%   ecosystem Workers Reps           ecosystem_spawn_ms, ecosystem_scale_down_ms,
%%                                    ecosystem_scale_up_ms
%%
%% Distributed figures run on two nodes, two VMs in two OS processes. Node B
%% is started first as `-run fbench serve NodeA`: it waits for A to connect
%% and halts when A goes away. Node A runs the figure as
%% `-run fbench dist Cmd NodeB Args...`, connecting to B first:
%%
%%   remote Size Msgs Reps            remote_msgs_per_s, remote_mb_per_s
%%   latency Rounds Reps              latency_p50/p99/p999/mean
%%   hol Rounds Reps                  hol_idle_p50/p99/p999/mean,
%%                                    hol_loaded_p50/p99/p999/mean,
%%                                    hol_bulk_mb_per_s
%%
%% This module is also the callback module of the supervisors the restart
%% and ecosystem figures use (init/1).
%%
%% Placement: processes are pinned to schedulers with the `{scheduler, I}`
%% spawn option (used by OTP's own test suites) when the VM accepts it, so
%% "across schedulers" really means two scheduler threads.
-module(fbench).
-behaviour(supervisor).
-export([main/1, dist/1, serve/1]).
-export([init/1, restart_worker/1, idle_worker/0]).
-export([pong/0, count_sink/2, bulk_sink/1, noop/0]).

main([Cmd | Args]) ->
    guarded(fun() -> run(Cmd, [list_to_integer(A) || A <- Args]) end).

%% Node A of a distributed figure: connects to node Peer, then runs Cmd.
dist([Cmd, Peer | Args]) ->
    guarded(fun() ->
        Node = list_to_atom(Peer),
        connect(Node, 200),
        run_dist(Cmd, Node, [list_to_integer(A) || A <- Args])
    end).

%% Node B of a distributed figure: waits (a minute at most) for node Peer
%% to connect, then halts as soon as Peer goes away, so that B never
%% outlives the run even if nobody stops it.
serve([Peer]) ->
    Node = list_to_atom(Peer),
    ok = net_kernel:monitor_nodes(true),
    case lists:member(Node, nodes()) of
        true -> ok;
        false -> receive {nodeup, Node} -> ok after 60000 -> halt(2) end
    end,
    true = erlang:monitor_node(Node, true),
    receive {nodedown, Node} -> halt(0) end.

guarded(Fun) ->
    try
        out(otp_release, list_to_integer(erlang:system_info(otp_release))),
        out(schedulers, erlang:system_info(schedulers)),
        out(schedulers_online, erlang:system_info(schedulers_online)),
        Fun()
    of
        _ -> halt(0)
    catch
        Class:Reason:Stack ->
            io:format("fbench_error ~p:~p ~p~n", [Class, Reason, Stack]),
            halt(1)
    end.

%% Connects to Node, retrying every 50 ms while it starts (Tries times).
connect(Node, 0) ->
    error({no_connection, Node});
connect(Node, Tries) ->
    case net_kernel:connect_node(Node) of
        true -> ok;
        _ -> timer:sleep(50), connect(Node, Tries - 1)
    end.

run("spawn", [N, Reps, PageSize]) ->
    [spawn_rep(N, PageSize) || _ <- lists:seq(1, Reps)];
run("local", [Msgs, Rounds, Senders, Reps]) ->
    Cross = erlang:system_info(schedulers) > 1,
    [local_rep(Msgs, Rounds, Senders, Cross) || _ <- lists:seq(1, Reps)];
run("restart", [Restarts, Batch, Reps]) ->
    %% The supervisor logs every child crash by default; Foundation's does
    %% not log, so neither does this one.
    logger:set_primary_config(level, none),
    [restart_rep(Restarts, Batch) || _ <- lists:seq(1, Reps)];
run("ecosystem", [Workers, Reps]) ->
    [ecosystem_rep(Workers) || _ <- lists:seq(1, Reps)].

run_dist("remote", Node, [Size, Msgs, Reps]) ->
    [remote_rep(Node, Size, Msgs) || _ <- lists:seq(1, Reps)];
run_dist("latency", Node, [Rounds, Reps]) ->
    [latency_rep(Node, Rounds) || _ <- lists:seq(1, Reps)];
run_dist("hol", Node, [Rounds, Reps]) ->
    [hol_rep(Node, Rounds) || _ <- lists:seq(1, Reps)];
run_dist("remote_spawn", Node, [Count, Spawners, Reps]) ->
    [remote_spawn_rep(Node, Count, Spawners) || _ <- lists:seq(1, Reps)].

%% Spawn: N idle processes, each waiting in `receive`; timed until every one
%% has run up to its receive (it bumps a counter first). Memory is the growth
%% of erlang:memory(processes) and of the VM's resident set.
spawn_rep(N, PageSize) ->
    Before = erlang:processes(),
    erlang:garbage_collect(),
    Counter = counters:new(1, [write_concurrency]),
    M0 = erlang:memory(processes),
    R0 = rss(PageSize),
    T0 = erlang:monotonic_time(nanosecond),
    spawn_idle(N, Counter),
    wait_count(Counter, N),
    T1 = erlang:monotonic_time(nanosecond),
    M1 = erlang:memory(processes),
    R1 = rss(PageSize),
    out(spawn_ns, (T1 - T0) / N),
    out(spawn_bytes, (M1 - M0) / N),
    out(spawn_rss_bytes, (R1 - R0) / N),
    stop_all(Before).

spawn_idle(0, _Counter) ->
    ok;
spawn_idle(K, Counter) ->
    spawn(fun() ->
        counters:add(Counter, 1, 1),
        receive stop -> ok end
    end),
    spawn_idle(K - 1, Counter).

wait_count(Counter, N) ->
    case counters:get(Counter, 1) >= N of
        true -> ok;
        false -> erlang:yield(), wait_count(Counter, N)
    end.

%% Kills every process not alive in Before and waits until they are gone.
stop_all(Before) ->
    Keep = sets:from_list(Before),
    [exit(P, kill) || P <- erlang:processes(), not sets:is_element(P, Keep)],
    wait_gone(length(Before), 1000).

wait_gone(_Count, 0) ->
    ok;
wait_gone(Count, Tries) ->
    case erlang:system_info(process_count) =< Count of
        true -> ok;
        false -> timer:sleep(10), wait_gone(Count, Tries - 1)
    end.

rss(PageSize) ->
    {ok, Statm} = file:read_file("/proc/self/statm"),
    [_Size, Resident | _] = binary:split(Statm, <<" ">>, [global]),
    binary_to_integer(Resident) * PageSize.

local_rep(Msgs, Rounds, Senders, Cross) ->
    out(send, one_to_one(Msgs, Cross)),
    {P50, P99, Mean} = ping_pong(Rounds, Cross),
    out(ping_pong_p50, P50),
    out(ping_pong_p99, P99),
    out(ping_pong_mean, Mean),
    out(fan_in, fan_in(Senders, max(1, Msgs div Senders))).

%% One sender process to one receiver: Msgs 64-byte binaries (heap binaries,
%% copied into the receiver's heap as any small message is).
one_to_one(Msgs, Cross) ->
    Self = self(),
    Bin = binary:copy(<<0>>, 64),
    T0 = erlang:monotonic_time(nanosecond),
    Receiver = on(1, fun() -> receive_n(Msgs), Self ! done end),
    on(other(Cross), fun() -> send_n(Receiver, Bin, Msgs) end),
    receive done -> ok end,
    T1 = erlang:monotonic_time(nanosecond),
    Msgs / ((T1 - T0) / 1.0e9).

%% Senders spread round-robin over the schedulers, one receiver.
fan_in(Senders, PerSender) ->
    Self = self(),
    Bin = binary:copy(<<0>>, 64),
    Schedulers = erlang:system_info(schedulers),
    T0 = erlang:monotonic_time(nanosecond),
    Receiver = on(1, fun() -> receive_n(Senders * PerSender), Self ! done end),
    [on(1 + (I rem Schedulers), fun() -> send_n(Receiver, Bin, PerSender) end)
     || I <- lists:seq(1, Senders)],
    receive done -> ok end,
    T1 = erlang:monotonic_time(nanosecond),
    Senders * PerSender / ((T1 - T0) / 1.0e9).

send_n(_To, _Bin, 0) -> ok;
send_n(To, Bin, K) -> To ! Bin, send_n(To, Bin, K - 1).

receive_n(0) -> ok;
receive_n(K) -> receive B when is_binary(B) -> receive_n(K - 1) end.

%% Round trips of a 64-byte binary; the pinging process times each round.
ping_pong(Rounds, Cross) ->
    Self = self(),
    Bin = binary:copy(<<0>>, 64),
    Ponger = on(other(Cross), fun pong/0),
    Warm = min(1000, Rounds div 10),
    on(1, fun() -> Self ! {samples, ping(Ponger, Bin, Warm, Rounds, [])} end),
    Samples = receive {samples, S} -> S end,
    exit(Ponger, kill),
    Sorted = lists:sort(Samples),
    Len = length(Sorted),
    {percentile(Sorted, Len, 500), percentile(Sorted, Len, 990), lists:sum(Sorted) / Len}.

ping(_Ponger, _Bin, 0, 0, Acc) ->
    Acc;
ping(Ponger, Bin, 0, Rounds, Acc) ->
    T0 = erlang:monotonic_time(nanosecond),
    Ponger ! {self(), Bin},
    receive {pong, _} -> ok end,
    T1 = erlang:monotonic_time(nanosecond),
    ping(Ponger, Bin, 0, Rounds - 1, [T1 - T0 | Acc]);
ping(Ponger, Bin, Warm, Rounds, Acc) ->
    Ponger ! {self(), Bin},
    receive {pong, _} -> ok end,
    ping(Ponger, Bin, Warm - 1, Rounds, Acc).

pong() ->
    receive {From, Bin} -> From ! {pong, Bin}, pong() end.

%% Remote: one process on A (this one) sends Msgs binaries of Size bytes to
%% a process on B, which counts them and their bytes and answers when it has
%% all. Binaries up to 64 bytes are heap binaries, larger ones refc
%% binaries, as an application's would be. The sink is up (one round trip)
%% before the clock starts.
remote_rep(Node, Size, Msgs) ->
    Bin = payload(Size),
    Sink = spawn(Node, ?MODULE, count_sink, [self(), Msgs]),
    Sink ! {ready, self()},
    receive {ready, Sink} -> ok end,
    T0 = erlang:monotonic_time(nanosecond),
    send_n(Sink, Bin, Msgs),
    Bytes = receive {counted, Sink, B} -> B end,
    T1 = erlang:monotonic_time(nanosecond),
    Bytes = Msgs * Size,
    Seconds = (T1 - T0) / 1.0e9,
    out(remote_msgs_per_s, Msgs / Seconds),
    out(remote_mb_per_s, Bytes / 1.0e6 / Seconds).

count_sink(From, Msgs) ->
    receive {ready, From} -> From ! {ready, self()} end,
    count_sink(From, Msgs, 0).

count_sink(From, 0, Bytes) ->
    From ! {counted, self(), Bytes};
count_sink(From, K, Bytes) ->
    receive B when is_binary(B) -> count_sink(From, K - 1, Bytes + byte_size(B)) end.

%% Remote spawn: Spawners processes on A each spawn Count div Spawners
%% processes on B, one after another, with spawn/4 (which returns once B
%% has answered with the pid); each spawned process ends at once.
remote_spawn_rep(Node, Count, Spawners) ->
    Each = Count div Spawners,
    Self = self(),
    T0 = erlang:monotonic_time(nanosecond),
    [spawn(fun() -> spawn_n(Node, Each), Self ! spawned end) || _ <- lists:seq(1, Spawners)],
    [receive spawned -> ok end || _ <- lists:seq(1, Spawners)],
    T1 = erlang:monotonic_time(nanosecond),
    out(remote_spawns_per_s, Each * Spawners / ((T1 - T0) / 1.0e9)).

spawn_n(_Node, 0) -> ok;
spawn_n(Node, K) ->
    _ = spawn(Node, ?MODULE, noop, []),
    spawn_n(Node, K - 1).

noop() -> ok.

%% Latency: round trips of a 64-byte binary between a process on A (this
%% one) and one on B.
latency_rep(Node, Rounds) ->
    Ponger = spawn(Node, ?MODULE, pong, []),
    Warm = min(1000, Rounds div 10),
    trips("latency", ping(Ponger, payload(64), Warm, Rounds, [])),
    exit(Ponger, kill).

%% Head-of-line blocking: the latency round trip (control) first on an idle
%% link, then while another process on A sends 1 MiB binaries to a sink on
%% B as fast as the link takes them (the sender is suspended while the
%% distribution buffer is busy). The bulk stream runs 100 ms before the
%% control samples start; its rate, from its start until the sink has
%% counted its last byte, is reported as hol_bulk_mb_per_s.
hol_rep(Node, Rounds) ->
    %% Both ends of the control round trip run at high priority, as the
    %% Foundation ends do.
    process_flag(priority, high),
    Bin = payload(64),
    Ponger = spawn_opt(Node, ?MODULE, pong, [], [{priority, high}]),
    Warm = min(1000, Rounds div 10),
    trips("hol_idle", ping(Ponger, Bin, Warm, Rounds, [])),
    Self = self(),
    Sink = spawn(Node, ?MODULE, bulk_sink, [0]),
    Big = payload(1 bsl 20),
    T0 = erlang:monotonic_time(nanosecond),
    Bulk = spawn(fun() -> bulk(Sink, Big) end),
    timer:sleep(100),
    trips("hol_loaded", ping(Ponger, Bin, Warm, Rounds, [])),
    Bulk ! {stop, Self},
    Bytes = receive {bulk_bytes, Sink, B} -> B end,
    T1 = erlang:monotonic_time(nanosecond),
    out(hol_bulk_mb_per_s, Bytes / 1.0e6 / ((T1 - T0) / 1.0e9)),
    exit(Ponger, kill).

%% Sends Big to Sink until told to stop, then tells Sink to report to the
%% one who stopped it (after the last Big: messages between two processes
%% arrive in order).
bulk(Sink, Big) ->
    receive
        {stop, From} -> Sink ! {done, From}
    after 0 ->
        Sink ! Big,
        bulk(Sink, Big)
    end.

bulk_sink(Bytes) ->
    receive
        B when is_binary(B) -> bulk_sink(Bytes + byte_size(B));
        {done, From} -> From ! {bulk_bytes, self(), Bytes}
    end.

%% Prints p50, p99, p99.9 and mean of round-trip samples as Prefix_p50 ...
trips(Prefix, Samples) ->
    Sorted = lists:sort(Samples),
    Len = length(Sorted),
    out([Prefix, "_p50"], percentile(Sorted, Len, 500)),
    out([Prefix, "_p99"], percentile(Sorted, Len, 990)),
    out([Prefix, "_p999"], percentile(Sorted, Len, 999)),
    out([Prefix, "_mean"], lists:sum(Sorted) / Len).

%% A binary of Size bytes, none of them zero.
payload(Size) ->
    binary:copy(<<16#A5>>, Size).

%% Supervisors of the restart and ecosystem figures.
init({restart, Observer}) ->
    Flags = #{strategy => one_for_one, intensity => 1000000000, period => 1},
    Child = #{id => worker, start => {?MODULE, restart_worker, [Observer]},
              restart => permanent, shutdown => 5000, type => worker},
    {ok, {Flags, [Child]}};
init(ecosystem) ->
    Flags = #{strategy => simple_one_for_one, intensity => 10, period => 5},
    Child = #{id => worker, start => {?MODULE, idle_worker, []},
              restart => permanent, shutdown => 5000, type => worker},
    {ok, {Flags, [Child]}}.

%% A worker that tells the observer it runs, then waits.
restart_worker(Observer) ->
    {ok, spawn_link(fun() -> Observer ! {up, self()}, idle() end)}.

idle_worker() ->
    {ok, spawn_link(fun idle/0)}.

idle() ->
    receive stop -> ok end.

%% Restart latency: the observer (this process) kills the worker with
%% exit(Pid, crash) and times until the replacement's {up, Pid} arrives.
%% The supervisor keeps every restart of the last `period` in a list that
%% it walks on each restart, so a fresh supervisor serves each Batch of
%% restarts (started and stopped untimed) to keep that list short.
restart_rep(Restarts, Batch) ->
    Warm = min(1000, Restarts div 10),
    Samples = restart_batches(Warm, Restarts, Batch, []),
    Sorted = lists:sort(Samples),
    Len = length(Sorted),
    out(restart_p50, percentile(Sorted, Len, 500)),
    out(restart_p99, percentile(Sorted, Len, 990)),
    out(restart_mean, lists:sum(Sorted) / Len).

restart_batches(0, 0, _Batch, Acc) ->
    Acc;
restart_batches(Warm, Restarts, Batch, Acc) ->
    {ok, Sup} = supervisor:start_link(?MODULE, {restart, self()}),
    Pid = receive {up, P} -> P end,
    WarmHere = min(Warm, Batch),
    TimedHere = min(Restarts, Batch - WarmHere),
    Acc1 = restarts(Pid, WarmHere, TimedHere, Acc),
    unlink(Sup),
    gen_server:stop(Sup),
    restart_batches(Warm - WarmHere, Restarts - TimedHere, Batch, Acc1).

restarts(_Pid, 0, 0, Acc) ->
    Acc;
restarts(Pid, 0, Timed, Acc) ->
    T0 = erlang:monotonic_time(nanosecond),
    exit(Pid, crash),
    New = receive {up, P} -> P end,
    T1 = erlang:monotonic_time(nanosecond),
    restarts(New, 0, Timed - 1, [T1 - T0 | Acc]);
restarts(Pid, Warm, Timed, Acc) ->
    exit(Pid, crash),
    New = receive {up, P} -> P end,
    restarts(New, Warm - 1, Timed, Acc).

%% Ecosystem: a simple_one_for_one supervisor; Workers children started
%% with supervisor:start_child, then nine in ten stopped with
%% supervisor:terminate_child (newest first), then started again.
ecosystem_rep(Workers) ->
    Low = max(1, Workers div 10),
    {ok, Sup} = supervisor:start_link(?MODULE, ecosystem),
    T0 = erlang:monotonic_time(nanosecond),
    Pids = start_children(Sup, Workers, []),
    T1 = erlang:monotonic_time(nanosecond),
    {Stop, _Keep} = lists:split(Workers - Low, Pids),
    [ok = supervisor:terminate_child(Sup, P) || P <- Stop],
    T2 = erlang:monotonic_time(nanosecond),
    _ = start_children(Sup, Workers - Low, []),
    T3 = erlang:monotonic_time(nanosecond),
    Workers = proplists:get_value(active, supervisor:count_children(Sup)),
    out(ecosystem_spawn_ms, (T1 - T0) / 1.0e6),
    out(ecosystem_scale_down_ms, (T2 - T1) / 1.0e6),
    out(ecosystem_scale_up_ms, (T3 - T2) / 1.0e6),
    unlink(Sup),
    gen_server:stop(Sup, normal, infinity).

%% Starts K children; returns their pids, newest first.
start_children(_Sup, 0, Acc) ->
    Acc;
start_children(Sup, K, Acc) ->
    {ok, Pid} = supervisor:start_child(Sup, []),
    start_children(Sup, K - 1, [Pid | Acc]).

%% Nearest-rank percentile in thousandths (999 is p99.9), in integers as
%% the Rust side computes it.
percentile(Sorted, Len, PerMille) ->
    Rank = max(1, min(Len, (PerMille * Len + 999) div 1000)),
    lists:nth(Rank, Sorted).

other(true) -> 2;
other(false) -> 1.

%% Spawns Fun bound to scheduler I when the VM supports it, else anywhere.
on(I, Fun) ->
    try
        spawn_opt(Fun, [{scheduler, I}])
    catch
        error:badarg -> spawn(Fun)
    end.

out(Key, Value) ->
    io:format("fbench ~s ~.3f~n", [Key, float(Value)]).
