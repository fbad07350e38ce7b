/* Generated source 2 of the steps context. */
int f2(int x) { return x * 2 + 1; }
