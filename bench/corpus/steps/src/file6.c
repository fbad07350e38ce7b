/* Generated source 6 of the steps context. */
int f6(int x) { return x * 6 + 1; }
