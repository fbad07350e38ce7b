/* Generated source 5 of the steps context. */
int f5(int x) { return x * 5 + 1; }
