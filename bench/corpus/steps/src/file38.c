/* Generated source 38 of the steps context. */
int f38(int x) { return x * 38 + 1; }
