/* Generated source 40 of the steps context. */
int f40(int x) { return x * 40 + 1; }
