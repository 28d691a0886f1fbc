/* The start gate of a trigctl task (x86-64 Linux; see trigctl/gate.py). */
#define SYS_read 0
#define SYS_write 1
#define SYS_open 2
#define SYS_close 3
#define SYS_dup2 33
#define SYS_execve 59
#define SYS_exit 60
#define ENOENT 2
#define EACCES 13
#define ENOEXEC 8
#define ENOTDIR 20

static long sys3(long n, long a, long b, long c) {
    long r;
    __asm__ volatile("syscall" : "=a"(r) : "a"(n), "D"(a), "S"(b), "d"(c) : "rcx", "r11", "memory");
    return r;
}

static long len(const char *s) { long n = 0; while (s[n]) n++; return n; }

static void say(const char *s) { sys3(SYS_write, 2, (long)s, len(s)); }

static void die(long code, const char *prog, const char *why) {
    say("trigctl-task: exec: "); say(prog); say(why);
    sys3(SYS_exit, code, 0, 0);
}

static char buf[8192];

/* execve, and a file the kernel cannot run (no #!) through /bin/sh, as a shell's exec does */
static long run(char *path, char **argv, char **envp) {
    long e = sys3(SYS_execve, (long)path, (long)argv, (long)envp);
    if (e == -ENOEXEC) {
        argv[-1] = "/bin/sh";
        argv[0] = path;
        sys3(SYS_execve, (long)"/bin/sh", (long)(argv - 1), (long)envp);
    }
    return e;
}

__attribute__((used)) void gate(long *sp) {
    long argc = sp[0];
    char **argv = (char **)(sp + 1), **envp = argv + argc + 1;
    char go;
    if (sys3(SYS_read, 0, (long)&go, 1) != 1)
        sys3(SYS_exit, 125, 0, 0); /* trigctl died before recording this process */
    long fd = sys3(SYS_open, (long)"/dev/null", 0, 0);
    if (fd > 0) { sys3(SYS_dup2, fd, 0, 0); sys3(SYS_close, fd, 0, 0); }
    if (argc < 2) sys3(SYS_exit, 127, 0, 0);
    char *prog = argv[1];
    char **args = argv + 1;
    for (char *p = prog; *p; p++)
        if (*p == '/') {
            long e = run(prog, args, envp);
            long missing = e == -ENOENT || e == -ENOTDIR;  /* as a shell says of a path that is not there */
            die(missing ? 127 : 126, prog, missing ? ": not found\n" : ": cannot run\n");
        }
    const char *path = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"; /* dash's default */
    for (char **e = envp; *e; e++) {
        char *v = *e;
        if (v[0] == 'P' && v[1] == 'A' && v[2] == 'T' && v[3] == 'H' && v[4] == '=') { path = v + 5; break; }
    }
    long n = len(prog), denied = 0;
    while (1) {
        const char *end = path;
        while (*end && *end != ':') end++;
        long d = end - path;
        if (d + n + 3 <= (long)sizeof buf && n > 0) {  /* ".", "/" and the NUL at most */
            long i = 0;
            if (d == 0) buf[i++] = '.';  /* an empty entry is the working directory */
            for (long j = 0; j < d; j++) buf[i++] = path[j];
            buf[i++] = '/';
            for (long j = 0; j <= n; j++) buf[i++] = prog[j];
            long e = run(buf, args, envp);
            if (e == -EACCES) denied = 1;
        }
        if (!*end) break;
        path = end + 1;
    }
    die(denied ? 126 : 127, prog, denied ? ": permission denied\n" : ": not found\n");
}

__asm__(".globl _start\n_start:\n\tmov %rsp, %rdi\n\tand $-16, %rsp\n\tcall gate\n\thlt\n");
