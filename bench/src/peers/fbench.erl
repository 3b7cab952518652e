%% The Erlang peer of foundation-bench (bench/src/peers/erlang.rs).
%%
%% Run as `erl -noshell [+S N:N] [+P Max] -pa Dir -run fbench main Cmd Args...`;
%% prints one `fbench <key> <value>` line per figure and repetition, then
%% halts. The Rust side takes the median per key.
%%
%%   spawn N Reps PageSize            spawn_ns, spawn_bytes, spawn_rss_bytes
%%   local Msgs Rounds Senders Reps   send, ping_pong_p50/p99/mean, fan_in
%%
%% Placement: processes are pinned to schedulers with the `{scheduler, I}`
%% spawn option (used by OTP's own test suites) when the VM accepts it, so
%% "across schedulers" really means two scheduler threads.
-module(fbench).
-export([main/1]).

main([Cmd | Args]) ->
    try
        out(otp_release, list_to_integer(erlang:system_info(otp_release))),
        out(schedulers, erlang:system_info(schedulers)),
        run(Cmd, [list_to_integer(A) || A <- Args])
    of
        _ -> halt(0)
    catch
        Class:Reason:Stack ->
            io:format("fbench_error ~p:~p ~p~n", [Class, Reason, Stack]),
            halt(1)
    end.

run("spawn", [N, Reps, PageSize]) ->
    [spawn_rep(N, PageSize) || _ <- lists:seq(1, Reps)];
run("local", [Msgs, Rounds, Senders, Reps]) ->
    Cross = erlang:system_info(schedulers) > 1,
    [local_rep(Msgs, Rounds, Senders, Cross) || _ <- lists:seq(1, Reps)].

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
    {percentile(Sorted, Len, 50), percentile(Sorted, Len, 99), lists:sum(Sorted) / Len}.

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

%% Nearest-rank percentile, as the Rust side computes it.
percentile(Sorted, Len, Pct) ->
    Rank = max(1, min(Len, ceil(Pct * Len / 100))),
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
