# Analyses a trace of fsync-trace.sh (issue 9 diagnosis): journal fsync latency inside and outside
# Flush requests are paired with completions oldest-first (an approximation when two flushes overlap).
# syncfs windows, flush request latency, and the io_uring workers' wake-up and on-CPU times.
import re,sys,collections
f=sys.argv[1]
ev=re.compile(r'^\s*(.+?)-(\d+)\s+\[\d+\]\s+\S+\s+([\d.]+): (\w+)[:( ]\s?(.*)$')
sync_start={}; syncs=[]; flush_iss={}; flushes=[]; writes_out={}; syncfs=[]; sfs_start={}
wr_iss={}; wake={}; delays=[]; oncpu={}; runs=[]
def pct(a,p):
    a=sorted(a); return a[min(len(a)-1,int(len(a)*p))] if a else float('nan')
for line in open(f):
    m=ev.match(line)
    if not m: continue
    comm,pid,t,name,rest=m.group(1).strip(),int(m.group(2)),float(m.group(3)),m.group(4),m.group(5)
    if name=='ext4_sync_file_enter':
        ino=re.search(r'ino (\d+)',rest).group(1); sync_start[pid]=(t,ino,comm)
    elif name=='ext4_sync_file_exit':
        if pid in sync_start:
            t0,ino,c=sync_start.pop(pid); syncs.append((t0,t-t0,ino,c))
    elif name=='sys_syncfs' and '->' not in rest: sfs_start[pid]=t
    elif name=='sys_syncfs':
        if pid in sfs_start: syncfs.append((sfs_start.pop(pid),t))
    elif name=='sched_wakeup':
        m3=re.search(r'comm=(\S+) pid=(\d+)',rest)
        if m3 and m3.group(1).startswith('uring-w'): wake[int(m3.group(2))]=t
    elif name=='sched_switch':
        m3=re.search(r'prev_comm=(.+?) prev_pid=(\d+) .*next_comm=(.+?) next_pid=(\d+)',rest)
        if m3:
            pp,np_=int(m3.group(2)),int(m3.group(4))
            if np_ in wake: w=wake.pop(np_); delays.append((w,t-w,m3.group(1)))
            if m3.group(3).startswith('uring-w'): oncpu[np_]=t
            if pp in oncpu: o=oncpu.pop(pp); runs.append((o,t-o))
    elif name in('block_rq_issue','block_rq_complete'):
        p=rest.split()
        rwbs=p[1]
        m2=re.search(r'\) (\d+) \+ (\d+)',rest)
        sec=int(m2.group(1)) if m2 else -1
        key=(rwbs,sec)
        if name=='block_rq_issue':
            if rwbs.startswith('F'): flush_iss[sec]=(t,len(wr_iss))
            elif 'W' in rwbs: wr_iss[key]=(t,int(p[2]))
        else:
            if rwbs.startswith('F'):
                for s,(t0,n) in list(flush_iss.items()):
                    flush_iss.pop(s); flushes.append((t0,t-t0,n)); break
            elif 'W' in rwbs:
                # complete rwbs may differ; match by sector
                for k in list(wr_iss):
                    if k[1]==sec: wr_iss.pop(k); break
t0=min(s[0] for s in syncs)
byino=collections.Counter(s[2] for s in syncs)
print('fsyncs by ino:',byino.most_common(5))
for ino,_ in byino.most_common(3):
    d=[s[1]*1000 for s in syncs if s[2]==ino]
    print(f' ino {ino}: n={len(d)} p50 {pct(d,.5):.2f} p99 {pct(d,.99):.2f} p99.9 {pct(d,.999):.2f} max {max(d):.1f} ms')
fl=[x[1]*1000 for x in flushes]
print(f'flush rq: n={len(fl)} p50 {pct(fl,.5):.2f} p99 {pct(fl,.99):.2f} max {max(fl) if fl else 0:.1f} ms')
print('syncfs:',[(round(a-t0,3),round((b-a)*1000,1)) for a,b in syncfs])
# fsync slow ones vs syncfs windows
jino=byino.most_common(1)[0][0]
slow=[s for s in syncs if s[1]>0.004]
ins=sum(1 for s in slow if any(a-0.005<=s[0]<=b for a,b in syncfs))
print(f'fsyncs >4ms: {len(slow)}, of which during a syncfs: {ins}')
sf=[x for x in flushes if x[1]>0.004]
print(f'flush rq >4ms: {len(sf)}, during syncfs: {sum(1 for x in sf if any(a-0.005<=x[0]<=b for a,b in syncfs))}; writes in flight at slow flush issue: {sorted(x[2] for x in sf)[:20]}')
# fsync time split: is flush rq the bulk of the slow fsyncs?

d=[x[1]*1000 for x in delays]
print(f'worker wakeup->run: n={len(d)} p50 {pct(d,.5):.3f} p99 {pct(d,.99):.2f} p99.9 {pct(d,.999):.2f} max {max(d):.1f} ms')
big=[x for x in delays if x[1]>0.002]
print(' delays >2ms: ',len(big),'during syncfs:',sum(1 for x in big if any(a-0.005<=x[0]<=b for a,b in syncfs)),'preempted-by:',collections.Counter(x[2] for x in big).most_common(6))
r=[x[1]*1000 for x in runs]
print(f'worker on-cpu runs: n={len(r)} p50 {pct(r,.5):.3f} p99 {pct(r,.99):.2f} p99.9 {pct(r,.999):.2f} max {max(r):.1f} ms; >2ms during syncfs: {sum(1 for x in runs if x[1]>0.002 and any(a-0.005<=x[0]<=b for a,b in syncfs))} of {sum(1 for x in runs if x[1]>0.002)}')
ins=[s[1]*1000 for s in syncs if s[2]==jino and any(a<=s[0]<=b for a,b in syncfs)]
outs=[s[1]*1000 for s in syncs if s[2]==jino and not any(a<=s[0]<=b for a,b in syncfs)]
print(f'journal fsync in syncfs: n={len(ins)} p50 {pct(ins,.5):.2f} p99 {pct(ins,.99):.2f} max {max(ins):.1f}; outside: n={len(outs)} p50 {pct(outs,.5):.2f} p99 {pct(outs,.99):.2f} max {max(outs):.1f} ms')
fi=[x[1]*1000 for x in flushes if any(a<=x[0]<=b for a,b in syncfs)]
print(f'flush rq in syncfs: n={len(fi)} p50 {pct(fi,.5):.2f} p99 {pct(fi,.99):.2f} max {max(fi):.1f} ms')
